"""The built-in demonstration (`geolocsft demo`) and its synthetic places.

It drives the trainer and the converter (as the real `geolocsft` commands in subprocesses) and
hands its results to the app, so it sits above every other part and may import any of them;
no part imports it. The core only names `demo.cli` in its plugin list."""
