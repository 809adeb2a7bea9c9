"""
Notifications of ended pools (webhooks, a user's notify URL), and the
checks on where the master's outbound requests may go.
"""
