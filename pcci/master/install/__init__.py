"""
What a new machine needs to become a worker, served by the master: the
install script (C{install.sh}, rendered with the pins of what it fetches),
the master's own wheel, and any wheelhouse of dependencies for labs with
no route to a package index.
"""
