"""Analytics jobs over stored shards (``python -m mapreduce <job>``).

Not built yet: this package only reserves the name.
"""
