"""Every domain's tables, imported so that SQLAlchemy's metadata and Alembic see them all."""

from __future__ import annotations


def load_all_models() -> None:
    from fleetkeeper.access import models as access_models
    from fleetkeeper.audit import models as audit_models
    from fleetkeeper.deployments import models as deployment_models
    from fleetkeeper.deployments import webhook_models
    from fleetkeeper.deployments.director import models as director_models
    from fleetkeeper.devices import models as device_models
    from fleetkeeper.releases import models as release_models
    from fleetkeeper.terminal import models as terminal_models

    del access_models, audit_models, deployment_models, device_models, release_models, webhook_models
    del director_models, terminal_models
