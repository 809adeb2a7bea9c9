"""
The domain: pools and jobs, who is connected, dispatch, history, targets,
schedules. Nothing here imports the HTTP layer or a database engine.
"""
