"""Encryption at rest for model versions: sealing on disk, opening into memory.

``modelport encrypt`` seals a version directory (``sealing.py``) under a
fresh data key that a key provider wraps (``keys.py`` for a local master
key, ``providers.py`` to choose one or plug in a KMS). At load the registry
hands sealed versions to ``loading.py``, which decrypts each file into an
anonymous memory file (``memview.py``) so runtimes keep opening paths while
no plaintext reaches a disk.
"""
