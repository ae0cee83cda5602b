"""The composition root: the app factories, the `Runtime` that holds the services, the listeners,
the device workers and the background jobs. Only the command line imports it; no domain does."""
