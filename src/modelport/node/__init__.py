"""One node of several processes: ``--workers N`` front-end workers acting as one server.

``supervisor.py`` takes the ports and runs the workers; each worker is a whole
server (``modelport.server``) that also joins the node: ``bus.py`` carries
changes and counts between workers, ``lease.py`` picks the one worker that
runs the node's single jobs, ``link.py`` is what a worker does with the
others' messages and what it tells them.
"""
