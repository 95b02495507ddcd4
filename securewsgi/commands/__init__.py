"""Console entry points: each module here is one command and only parses arguments."""
