"""``delfx serve``: an HTTP API and a web page over one collection (needs ``delfx[serve]``)."""
