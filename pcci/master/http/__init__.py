"""
The REST API (Klein), its guards and limits, event streams, metrics, the
OpenAPI document and the dashboard's static files.
"""
