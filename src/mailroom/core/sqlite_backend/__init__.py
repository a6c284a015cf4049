"""Django's SQLite backend: a write lock taken as soon as it is free, a page cache per setting (``base``)."""
