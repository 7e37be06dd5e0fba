"""The Python client library and the chat CLI (``python -m clients.chat``).

Not built yet: this package only reserves the name.
"""
