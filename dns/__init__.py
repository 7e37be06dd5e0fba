"""Discovery service: the authoritative, epoch-numbered cluster map (``python -m dns``).

Not built yet: this package only reserves the name (and shadows the third-party ``dns`` package
from dnspython, which the project does not use).
"""
