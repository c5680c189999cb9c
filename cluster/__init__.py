"""The cluster runner: `geolocsft locate ... --ray` and `geolocsft bench run ... --ray` run the
same engine, prompt, settings and results store across a Ray cluster (the `cluster` extra).

Photos are listed once on the driver; reading, hashing and image preparation run as Ray tasks;
an actor pool runs one `geolocsft.engine.Engine` per actor over many photos; finished rows
stream back to the driver, which alone writes the `ResultStore`. See docs/cluster.md.

Imports the core and Ray only (Ray inside functions: `cluster.cli` is imported by the core's
command line even when Ray is not installed)."""
