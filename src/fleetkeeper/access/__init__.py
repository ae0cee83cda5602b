"""People: accounts, sign-in, roles and permission checks."""
