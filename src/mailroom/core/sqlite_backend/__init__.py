"""Django's SQLite backend, with a write lock that is taken as soon as it is free (see ``base``)."""
