"""
Several masters on one PostgreSQL store: mail between masters, links to
workers held by another master, replicas of its pools, the LISTEN channel.
"""
