"""
Who may do what: API tokens, and the permits a scoped token gives.
"""
