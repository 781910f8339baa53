"""Simulated device firmware on pseudo-terminals, speaking the exact wire protocols.

May import ``drivers`` codecs (it speaks the same protocols) and nothing of ``daemon``.
"""
