"""tv-sandbox: run legacy data-pipeline scripts unchanged, with every output in the run folder and
the shared lakehouse out of reach. See README.md and docs/architecture.md."""
