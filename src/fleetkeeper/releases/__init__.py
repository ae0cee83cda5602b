"""Software trust: releases, the TUF image repository, the per-device director, object storage."""
