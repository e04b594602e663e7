"""TLS for every listener: certificate material, server contexts and rotation.

``material`` reads and checks PEM files (a bad file is a ConfigError naming
it); ``rotation`` holds the live material, watches the files and pushes a
new pair into the running listeners without closing any connection.
"""
