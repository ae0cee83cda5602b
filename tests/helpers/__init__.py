"""Plain functions the test packages share: devices, releases, deployments, groups, users and the
console as the tests need them. One copy each, imported from here rather than from another test module."""
