"""Remote terminal and file transfer: sessions relayed between an operator and a device's agent."""
