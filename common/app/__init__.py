"""The web page's HTTP API (the page itself is in web/)."""
