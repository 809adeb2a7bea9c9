"""
Files: pushed to workers, and fetched from them.
"""
