# Runtime settings for this machine kind (sourced by the scripts; see README "Runtime settings").
# Ray skips the auth-token warning. (Local Ray clusters stay on 127.0.0.1 through the jobs'
# own connection code, pipelines/ray_cluster.py, not through RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER,
# which would also forbid multi-node clusters.)
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
# No model hub is reachable here: fail in 0.1 s instead of retrying for a minute.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
# albumentations checks PyPI for a newer version at import time.
export NO_ALBUMENTATIONS_UPDATE="${NO_ALBUMENTATIONS_UPDATE:-1}"
