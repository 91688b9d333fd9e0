#!/usr/bin/env bash
# Deploy landslide-mapper to Google Cloud (see infra/README.md for the walkthrough).
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket infra/deploy.sh [STEP...]
#
# Steps (default: setup images template configs scans):
#   setup     enable APIs; bucket, Artifact Registry repository, service accounts, IAM
#   images    build the Dataflow/launcher image and the trainer image with Cloud Build
#   template  build the Dataflow Flex Template spec (gs://BUCKET/templates/landslides.json)
#   configs   upload the scan configurations named in infra/schedule.yaml (+ AOI files)
#   scans     create/update the Cloud Run scan jobs and the Cloud Scheduler jobs
#   train     submit the Vertex AI training job (infra/vertex-train.yaml: one GPU;
#             TRAIN_ACCELERATOR=tpu: infra/vertex-train-tpu.yaml, a TPU v5e slice)
#   run NAME  start the Cloud Run scan job NAME now (without waiting for its schedule)
#
# Optional: REPO (landslides), TAG (git commit), EE_PROJECT (PROJECT), PYTHON (a Python
# with PyYAML; default .venv/bin/python or python3), RUNNER_SA_NAME, SCHEDULER_SA_NAME,
# IMAGE, GPU_IMAGE, TRAIN_IMAGE, TPU_TRAIN_IMAGE (image names), TRAIN_ACCELERATOR (gpu).
# Every gcloud command is echoed before it runs. Re-running a step updates what exists.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${REGION:?set REGION, e.g. us-central1}"
: "${BUCKET:?set BUCKET to the bucket name (without gs://)}"
REPO="${REPO:-landslides}"
TAG="${TAG:-$(git rev-parse --short HEAD 2>/dev/null || date -u +%Y%m%d%H%M%S)}"
EE_PROJECT="${EE_PROJECT:-$PROJECT}"
RUNNER_SA_NAME="${RUNNER_SA_NAME:-landslides-runner}"
SCHEDULER_SA_NAME="${SCHEDULER_SA_NAME:-landslides-scheduler}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

REGISTRY="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}"
export IMAGE="${IMAGE:-${REGISTRY}/landslides:${TAG}}"
export TRAIN_IMAGE="${TRAIN_IMAGE:-${REGISTRY}/landslides-trainer:${TAG}}"
export GPU_IMAGE="${GPU_IMAGE:-${REGISTRY}/landslides-gpu:${TAG}}"
export TPU_TRAIN_IMAGE="${TPU_TRAIN_IMAGE:-${REGISTRY}/landslides-trainer-tpu:${TAG}}"
TRAIN_ACCELERATOR="${TRAIN_ACCELERATOR:-gpu}"
export SERVICE_ACCOUNT="${RUNNER_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
export BUCKET
SCHEDULER_SA="${SCHEDULER_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
TEMPLATE="gs://${BUCKET}/templates/landslides.json"

run() { printf '+ %s\n' "$*" >&2; "$@"; }

# A value of infra/schedule.yaml: setting SECTION KEY
setting() {
  "$PYTHON" -c 'import sys, yaml
doc = yaml.safe_load(open("infra/schedule.yaml"))
print(doc[sys.argv[1]][sys.argv[2]])' "$1" "$2"
}

# The schedules of infra/schedule.yaml, one tab-separated line each:
# name target config cron time_zone paused
schedules() {
  "$PYTHON" -c 'import yaml
for s in yaml.safe_load(open("infra/schedule.yaml"))["schedules"]:
    print("\t".join([s["name"], s["target"], s["config"], s["cron"],
                     s.get("time_zone", "Etc/UTC"), str(bool(s.get("paused"))).lower()]))'
}

setup() {
  run gcloud services enable --project "$PROJECT" dataflow.googleapis.com \
    run.googleapis.com cloudscheduler.googleapis.com artifactregistry.googleapis.com \
    cloudbuild.googleapis.com earthengine.googleapis.com aiplatform.googleapis.com \
    storage.googleapis.com compute.googleapis.com
  gcloud storage buckets describe "gs://${BUCKET}" --project "$PROJECT" >/dev/null 2>&1 ||
    run gcloud storage buckets create "gs://${BUCKET}" --project "$PROJECT" \
      --location "$REGION" --uniform-bucket-level-access
  gcloud artifacts repositories describe "$REPO" --project "$PROJECT" \
    --location "$REGION" >/dev/null 2>&1 ||
    run gcloud artifacts repositories create "$REPO" --project "$PROJECT" \
      --location "$REGION" --repository-format docker
  local sa
  for sa in "$RUNNER_SA_NAME" "$SCHEDULER_SA_NAME"; do
    gcloud iam service-accounts describe "${sa}@${PROJECT}.iam.gserviceaccount.com" \
      --project "$PROJECT" >/dev/null 2>&1 ||
      run gcloud iam service-accounts create "$sa" --project "$PROJECT" \
        --display-name "landslide-mapper ${sa#landslides-}"
  done
  # The runner: Dataflow workers, the Flex Template launcher, the Cloud Run scan job and
  # the Vertex AI trainer all run as this account.
  local role
  for role in roles/dataflow.worker roles/dataflow.developer roles/earthengine.viewer \
      roles/serviceusage.serviceUsageConsumer roles/artifactregistry.reader \
      roles/logging.logWriter roles/aiplatform.user; do
    run gcloud projects add-iam-policy-binding "$PROJECT" --condition None --quiet \
      --member "serviceAccount:${SERVICE_ACCOUNT}" --role "$role" >/dev/null
  done
  run gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" \
    --member "serviceAccount:${SERVICE_ACCOUNT}" --role roles/storage.objectAdmin >/dev/null
  # It submits Dataflow jobs that run as itself.
  run gcloud iam service-accounts add-iam-policy-binding "$SERVICE_ACCOUNT" \
    --project "$PROJECT" --member "serviceAccount:${SERVICE_ACCOUNT}" \
    --role roles/iam.serviceAccountUser >/dev/null
  # The scheduler starts Cloud Run jobs and launches the Flex Template (as the runner).
  for role in roles/run.invoker roles/dataflow.developer; do
    run gcloud projects add-iam-policy-binding "$PROJECT" --condition None --quiet \
      --member "serviceAccount:${SCHEDULER_SA}" --role "$role" >/dev/null
  done
  run gcloud iam service-accounts add-iam-policy-binding "$SERVICE_ACCOUNT" \
    --project "$PROJECT" --member "serviceAccount:${SCHEDULER_SA}" \
    --role roles/iam.serviceAccountUser >/dev/null
}

images() {
  run gcloud builds submit --project "$PROJECT" --region "$REGION" \
    --config infra/cloudbuild.yaml --ignore-file infra/.gcloudignore \
    --substitutions "_IMAGE=${IMAGE},_GPU_IMAGE=${GPU_IMAGE},_TRAIN_IMAGE=${TRAIN_IMAGE},_TPU_TRAIN_IMAGE=${TPU_TRAIN_IMAGE}" .
}

template() {
  run gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" \
    --image "$IMAGE" --sdk-language PYTHON \
    --metadata-file infra/scan-template-metadata.json
}

configs() {
  local tmp name target config rest
  tmp="$(mktemp -d)"
  while IFS=$'\t' read -r name target config rest; do
    sed -e "s#gs://YOUR_BUCKET#gs://${BUCKET}#g" -e "s#YOUR_EE_PROJECT#${EE_PROJECT}#g" \
      "infra/examples/$(basename "$config")" > "${tmp}/$(basename "$config")"
    run gcloud storage cp "${tmp}/$(basename "$config")" "gs://${BUCKET}/${config}"
    run gcloud storage cp infra/examples/*.geojson "gs://${BUCKET}/$(dirname "$config")/"
  done < <(schedules)
  rm -rf "$tmp"
}

scans() {
  local machine workers disk cpu memory timeout
  machine="$(setting dataflow machine_type)"
  workers="$(setting dataflow max_num_workers)"
  disk="$(setting dataflow disk_size_gb)"
  cpu="$(setting cloud_run cpu)"
  memory="$(setting cloud_run memory)"
  timeout="$(setting cloud_run task_timeout)"
  # Beam options of every sweep submitted by the Cloud Run scan job.
  local beam="--runner,DataflowRunner,--project,${PROJECT},--region,${REGION}"
  beam+=",--temp_location,gs://${BUCKET}/tmp,--staging_location,gs://${BUCKET}/staging"
  beam+=",--sdk_container_image,${IMAGE},--sdk_location,container"
  beam+=",--service_account_email,${SERVICE_ACCOUNT},--machine_type,${machine}"
  beam+=",--max_num_workers,${workers},--disk_size_gb,${disk},--experiments,use_runner_v2"
  local name target config cron tz paused uri body verb headers
  while IFS=$'\t' read -r name target config cron tz paused; do
    if [[ "$target" == cloud-run-job ]]; then
      run gcloud run jobs deploy "$name" --project "$PROJECT" --region "$REGION" \
        --image "$IMAGE" --command landslides \
        --args="scan,--config,gs://${BUCKET}/${config},${beam}" \
        --service-account "$SERVICE_ACCOUNT" --cpu "$cpu" --memory "$memory" \
        --task-timeout "$timeout" --max-retries 0 --tasks 1
      uri="https://${REGION}-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/${PROJECT}/jobs/${name}:run"
      body='{}'
    elif [[ "$target" == flex-template ]]; then
      uri="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"
      body="$(cat <<JSON
{"launchParameter": {
  "jobName": "${name}",
  "containerSpecGcsPath": "${TEMPLATE}",
  "parameters": {"command": "scan", "config": "gs://${BUCKET}/${config}"},
  "environment": {
    "serviceAccountEmail": "${SERVICE_ACCOUNT}",
    "tempLocation": "gs://${BUCKET}/tmp",
    "stagingLocation": "gs://${BUCKET}/staging",
    "sdkContainerImage": "${IMAGE}",
    "machineType": "${machine}",
    "launcherMachineType": "${machine}",
    "maxWorkers": ${workers},
    "diskSizeGb": ${disk},
    "additionalExperiments": ["use_runner_v2"]}}}
JSON
)"
    else
      echo "infra/schedule.yaml: schedule ${name} has unknown target ${target}" >&2
      exit 2
    fi
    if gcloud scheduler jobs describe "$name" --project "$PROJECT" \
        --location "$REGION" >/dev/null 2>&1; then
      verb=update; headers=--update-headers
    else
      verb=create; headers=--headers
    fi
    run gcloud scheduler jobs "$verb" http "$name" --project "$PROJECT" \
      --location "$REGION" --schedule "$cron" --time-zone "$tz" --uri "$uri" \
      --http-method POST --message-body "$body" "$headers" "Content-Type=application/json" \
      --oauth-service-account-email "$SCHEDULER_SA"
    if [[ "$paused" == true ]]; then
      run gcloud scheduler jobs pause "$name" --project "$PROJECT" --location "$REGION"
    else
      run gcloud scheduler jobs resume "$name" --project "$PROJECT" --location "$REGION" ||
        true  # already enabled
    fi
  done < <(schedules)
}

train() {
  local tmp spec
  case "$TRAIN_ACCELERATOR" in
    gpu) spec=infra/vertex-train.yaml ;;
    tpu) spec=infra/vertex-train-tpu.yaml ;;
    *) echo "TRAIN_ACCELERATOR must be gpu or tpu, not ${TRAIN_ACCELERATOR}" >&2; exit 2 ;;
  esac
  tmp="$(mktemp -d)"
  "$PYTHON" -c 'import os, sys
sys.stdout.write(os.path.expandvars(open(sys.argv[1]).read()))' "$spec" \
    > "${tmp}/vertex-train.yaml"
  run gcloud ai custom-jobs create --project "$PROJECT" --region "$REGION" \
    --display-name "landslides-train-${TAG}" --config "${tmp}/vertex-train.yaml"
  rm -rf "$tmp"
}

run_now() {
  run gcloud run jobs execute "$1" --project "$PROJECT" --region "$REGION"
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(setup images template configs scans)
i=0
while [[ $i -lt ${#steps[@]} ]]; do
  case "${steps[$i]}" in
    setup|images|template|configs|scans|train) "${steps[$i]}" ;;
    run) i=$((i + 1)); run_now "${steps[$i]:?run needs the scan job name}" ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
  i=$((i + 1))
done
