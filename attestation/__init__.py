"""TPM 2.0 access and pure verification of quotes and certificates from bytes.

Imports nothing of mycoedge's other packages (see shared/design/ARCHITECTURE.md).
"""
