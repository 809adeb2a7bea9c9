"""
The master: the worker port (L{connection}), the cluster's state
(L{state}), the REST API (L{api}, behind L{guards}), metrics, and the twistd
plugin's service construction (L{tap}).
"""
