"""
The worker: its connection to the master (L{connection}), running jobs
(L{process}), measuring this machine (L{health}), the service that keeps
it connected (L{service}) and the twistd plugin's options (L{tap}).
"""
