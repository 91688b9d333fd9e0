"""Earth Engine credentials that a worker creates for itself, in its DoFn's ``setup``.

A source carries a *credentials factory*, never credentials: the factory is pickled with
the source and called by :func:`~pipelines.sources.earthengine.client.initialize` in the
process that reads (the launcher, then every worker), so no token travels in pipeline
options, pickled DoFns, files or logs. Three choices:

* ``None``: the ``ee`` client's own search, Earth Engine's stored credentials
  (``earthengine authenticate``) and then application default credentials. Used when
  the workers run on this machine.
* :class:`ApplicationDefault`: ``google.auth.default`` with the Earth Engine scopes, in
  each worker: the worker's service account on Dataflow (``--service_account_email``), a
  key file named by ``GOOGLE_APPLICATION_CREDENTIALS``, or ``gcloud auth
  application-default login``. Remote runners get it (see
  :meth:`~pipelines.sources.earthengine.source.EarthEngineSource.for_workers`), because
  stored Earth Engine credentials exist only on the launcher.
* :class:`TokenFromEnv`: an access token read from an environment variable *in the
  process that reads*. Only worker processes started from the launcher inherit that
  variable, so it is refused on remote runners (``local_only``).
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.errors import SourceError

__all__ = ["EE_SCOPES", "ApplicationDefault", "TokenFromEnv"]

#: OAuth scopes Earth Engine accepts (cloud-platform covers the project's quota).
EE_SCOPES = ("https://www.googleapis.com/auth/earthengine",
             "https://www.googleapis.com/auth/cloud-platform")


class ApplicationDefault:
    """Application default credentials with the Earth Engine scopes, found by the caller.

    Attributes:
        local_only: False: works wherever the process has credentials of its own.
    """

    local_only = False

    def __call__(self) -> Any:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _ = google.auth.default(scopes=list(EE_SCOPES))
        except DefaultCredentialsError as exc:
            raise SourceError(
                f"No application default credentials in this process ({exc}). On Dataflow "
                f"the workers use the job's service account (--service_account_email): "
                f"register it for Earth Engine and grant it roles/serviceusage."
                f"serviceUsageConsumer on the project; elsewhere set "
                f"GOOGLE_APPLICATION_CREDENTIALS to a service account key file."
            ) from exc
        return credentials

    def __repr__(self) -> str:
        return "ApplicationDefault()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApplicationDefault)

    def __hash__(self) -> int:
        return hash(ApplicationDefault)


class TokenFromEnv:
    """OAuth credentials from an access token in environment variable ``var``.

    For local runs and CI that mint a token outside (``gcloud auth
    print-access-token``). Only the variable's *name* is kept (and pickled); the token is
    read when called, in the process that reads.

    Attributes:
        var: The environment variable.
        local_only: True: worker processes that are not started from the launcher do
            not have the variable.
    """

    local_only = True

    def __init__(self, var: str) -> None:
        self.var = var

    def __call__(self) -> Any:
        from google.oauth2.credentials import Credentials

        token = os.environ.get(self.var)
        if not token:
            raise SourceError(
                f"Environment variable {self.var} holds no Earth Engine access token. Set "
                f"it, e.g. `export {self.var}=$(gcloud auth print-access-token)`, or drop "
                f"--ee-token-env to use the stored or application default credentials."
            )
        return Credentials(token)

    def __repr__(self) -> str:
        return f"TokenFromEnv({self.var!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenFromEnv) and other.var == self.var

    def __hash__(self) -> int:
        return hash((TokenFromEnv, self.var))
