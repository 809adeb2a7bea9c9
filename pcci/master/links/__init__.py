"""
The worker port: the protocol each connected worker speaks to this master.
"""
