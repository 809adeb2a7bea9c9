"""
The C{pcci} command: run commands on the cluster from a terminal.

It talks to the master only through the REST API (see C{docs/api.md}).
C{main} holds the commands and their options; C{client} the HTTP calls;
C{render} what a person reads; C{run} the C{pcci run} command.
"""
