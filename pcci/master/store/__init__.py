"""
The store: pools, tokens, schedules and webhook deliveries, kept in SQLite
(one master) or PostgreSQL (several).
"""
