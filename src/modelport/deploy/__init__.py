"""Running modelport nodes: a whole fleet on this machine (``local``)."""
