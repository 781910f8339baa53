"""Device support as a library: pure codecs, supervised serial links, hot-plug and mDNS.

Imports nothing of mycoedge's other packages (see shared/design/ARCHITECTURE.md).
"""
