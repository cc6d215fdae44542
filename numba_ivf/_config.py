"""Numeric policy in one place: fastmath flags, tile shapes, block sizes, tolerances.

Kernels import their constants from here so that a reader can see every numeric
decision of the package on one page, and so that Numba sees them as compile-time
constants (module-level ints are frozen into the machine code).
"""

# -- fastmath ---------------------------------------------------------------------
# Reassociation and contraction let LLVM vectorise reductions and fuse multiply-adds.
# `nnan`/`ninf` are left out on purpose: inputs are validated to be finite, but
# sentinels (+inf/-inf for "no result yet") must keep their meaning inside kernels.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # a set: Numba rejects frozenset

# -- tiled assignment (coarse quantizer, k-means) ----------------------------------
def _host_has_avx512f() -> bool:
    # Reading the host's features does not compile anything.
    try:
        from llvmlite import binding
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - exotic llvmlite builds
        return False


# Register block of the micro-kernel: MR points x NR centroids of float32 accumulators
# stay in vector registers while the kernel walks the feature dimension. ASSIGN_VW is the
# vector width in floats the block is built from: 16 (one zmm) with AVX-512, else 8
# (one ymm; two q-registers on NEON). With 32 zmm registers MR=8 rows x 2 vectors = 16
# accumulators plus two centroid loads and two broadcasts fit (MR=8 beat MR=6 by ~8%
# and matched MR=12 here); AVX2 has 16 ymm registers, so MR=6 (12 accumulators).
ASSIGN_VW = 16 if _host_has_avx512f() else 8
ASSIGN_MR = 8 if ASSIGN_VW == 16 else 6
ASSIGN_NR = 2 * ASSIGN_VW
# Points per prange task: a tile of points is reused against every centroid panel, so
# it should sit in L2: tile * d * 4 bytes <= ASSIGN_TILE_BYTES.
ASSIGN_TILE_BYTES = 256 * 1024
ASSIGN_TILE_MIN = ASSIGN_MR * 4
# Top-p of at least ASSIGN_TOPK_SCORES_MIN_P centroids (the coarse step of an IVF search)
# writes each tile's scores to a block of at most ASSIGN_TOPK_SCORE_BYTES and cuts every
# row to its top p at once (bisection on the scores, at most ASSIGN_TOPK_CUT_STEPS
# steps); smaller p keeps a sorted insertion per row (k-means' top-2, small nprobe).
# Measured one thread, real queries, k=1024 (glove-50 / fashion-mnist-784): the block
# is 0.67 / 0.92x the insertion at p=8, 0.90 / 1.00x at 16, 1.29 / 1.14x at 32 and
# 2.16 / 1.41x at 64.
ASSIGN_TOPK_SCORES_MIN_P = 32
ASSIGN_TOPK_SCORE_BYTES = 256 * 1024
ASSIGN_TOPK_CUT_STEPS = 40
ASSIGN_TILE_MAX = ASSIGN_MR * 128
# Aim for at least this many tiles per thread so that prange can balance the load.
ASSIGN_TILES_PER_THREAD = 4

# -- int8-screened assignment (``kernels.assign.screen``) ----------------------------
# Rows and centroids are quantized to int8 (one scale per row), their exact int32 dot
# products bound every true score to an interval, and only the centroids whose interval
# reaches the p-th best lower bound are scored again exactly (float64). MR x NR int32
# accumulators (8 rows x 2 zmm) like the float32 kernel; a tile's (rows, k) int32 block
# stays in L2.
SCREEN_MR = 8
SCREEN_NR = 32
SCREEN_TILE_BYTES = 384 * 1024
# Slack added to each interval on top of the quantization bound, relative to
# ||x|| ||c|| + |bias|: covers the float32 rounding of the intervals (a few ulps, ~3e-7)
# and the float64 rounding of the re-score (~1e-13), and costs no candidates (the
# bound itself is ~1e-2 of that).
SCREEN_SLACK = 1e-5
# ... plus an absolute one: below ~1e-38 the float32 intervals lose bits to subnormal
# rounding (absolute, not relative), so scores within 1e-35 of each other are never
# told apart by the screen (such rows are simply re-scored in float64).
SCREEN_ABS_SLACK = 1e-35
# Where the screen replaces the float32 kernel (with VNNI only): measured here (AMD EPYC,
# 2 threads), k-means-sized assignment (p=1) of 100k rows to 1265 / 980 centroids took
# 0.62x the tiled kernel's time at d=384 and 0.58x at d=784, but 1.4x at d=50; the IVF
# coarse step (p=32, 2000 queries, d=384) 0.80x. Fewer rows than SCREEN_MIN_ROWS keep
# the float32 kernel (one query's coarse step has its own GEMV).
SCREEN_MIN_D = 128
SCREEN_MIN_K = 64
SCREEN_MIN_ROWS = 16
# Its re-score grows with p (about 2p candidate rows read, ~30 ns each at d=384, from
# L2/L3) while the float32 kernel's cut barely does: 2000 queries, time screened /
# tiled at p = 8, 32, 48, 64, 128: gcide-minilm-384 0.60, 0.81, 0.96, 1.12, 1.43;
# fashion-mnist-784 0.62, 0.92, 0.96, 0.96, 1.43. So the coarse step screens up to
# p = 48 (nprobe <= 48).
SCREEN_MAX_P = 48

# Relative tolerance for comparing a fast kernel's chosen centroid with the oracle's
# best when the two are nearly tied: float32 dot products over d terms carry about
# sqrt(d) * 2**-24 relative error in the score, which becomes larger relative error
# in the distance ||x||^2 - 2 x.c + ||c||^2 when the terms cancel.
ASSIGN_RTOL = 1e-4

# -- k-means -----------------------------------------------------------------------
KMEANS_MAX_POINTS_PER_CENTROID = 256
# Below this many flops per assignment (2 n d k), a fit runs on one thread: a parallel
# region costs tens of microseconds on an idle machine and milliseconds on a busy
# one, more than such an iteration's work (PQ sub-spaces with 16 codes, for one).
KMEANS_PARALLEL_MIN_FLOP = 2e7
# Hamerly bounds: a row is recomputed unless upper + slack < lower, slack relative to
# the distances and the data scale; it absorbs the float32 rounding of the kernel's
# distances (relative ~1e-5), so a skipped row is one whose assignment is certain.
KMEANS_BOUND_SLACK = 1e-3
# FAISS nudges the two halves of a split cluster apart by this relative amount.
KMEANS_SPLIT_EPS = 1.0 / 1024.0
# Points per prange chunk in the centroid update (per-chunk partial sums).
KMEANS_UPDATE_CHUNK = 4096
# Hamerly iterations gather the rows whose bounds do not prove their assignment this
# many at a time (65536 rows of d=96 float32: 24 MiB) instead of all at once, which
# was nearly a copy of the training set in the first iterations (96 of 138 MiB of a
# 262144 x 96 train's peak, docs/one_machine.md).
KMEANS_GATHER_ROWS = 65536

# -- top-k ------------------------------------------------------------------------
# A reservoir top-k (kernels/topk.res_*) holds this many times k candidates before a
# quickselect cuts it back to k: larger means fewer selections but a looser admission
# threshold between them (FAISS's ReservoirTopN uses 2).
RESERVOIR_FACTOR = 2
# Bisection steps of a reservoir cut before it falls back to the exact quickselect (a
# cut usually lands within 10-15 on dequantized fast-scan keys), and how many entries
# past k the final cut may leave for that quickselect.
RESERVOIR_CUT_STEPS = 40
RESERVOIR_FINISH_SLACK = 8

# -- IVF ---------------------------------------------------------------------------
# Inverted lists grow by this factor when full (amortised O(1) append).
IVF_GROWTH = 1.5
# List-major search splits the queries into this many groups per thread (one measured
# best here: every extra group reads each probed list once more), and is chosen when a
# group has at least this many queries per list on average (below that, each list is
# read about once per query anyway, as in the batch plan). Measured on glove-50 (d=50)
# and fashion-mnist-784 at nprobe 8-64: 2-4x the batch plan's QPS.
IVF_LIST_MAJOR_GROUPS_PER_THREAD = 1
IVF_LIST_MAJOR_MIN_QUERIES_PER_LIST = 1.0
# An add of at least this fraction of the rows already stored spreads the lists apart in
# place (every overflowing list gets exactly its new size, the arena is resized in
# place: no holes, no spare room, no second arena) instead of moving the overflowing
# lists to the end of the arena. A spread copies every stored row, so this bounds its
# cost to 1 / fraction row copies per added row: 64 rows of 24-48 code bytes (4-bit /
# 8-bit PQ) or of d floats (IVFFlat) move in well under the time of the added row's
# coarse assignment (2 d nlist flops); the value is that argument, not a sweep. A 10M x
# 96 IVFPQ 4-bit build in chunks of 500k rows spreads at every add and its add got
# faster, 142 -> 117 s (docs/one_machine.md).
IVF_SPREAD_MIN_ADD_FRACTION = 1.0 / 64
# A list's first allocation holds at least this many rows (tiny lists would otherwise
# move on nearly every add).
IVF_LIST_MIN_CAPACITY = 16
# Single-query scan: rows per parallel run at least this many (a run must pay for the
# parallel launch), and at most IVF_SINGLE_RUNS_PER_THREAD runs per thread.
IVF_SINGLE_MIN_RUN = 2048
# Up to this many queries, the coarse step of every IVF index is a serial GEMV over the
# transposed centroids (list_scan.coarse_few, shared with the one-query kernels) instead
# of the tiled kernel, whose register block is built for many rows at a time (for one
# query it computes MR rows, MR-1 of them thrown away).
IVF_COARSE_SCAN_MAX_QUERIES = 4
# The coarse step of those few queries keeps its nprobe best lists with a heap up to
# this many, and with a bisection cut on the keys beyond (list_scan._select_lists;
# measured at glove-50's 1265 lists, 200 queries: heap 2.5 / 12.6 us at 8 / 64 lists,
# the cut 3.8 / 4.3 us).
COARSE_SELECT_HEAP_MAX_P = 8
IVF_SINGLE_RUNS_PER_THREAD = 2
# One query per call (IVFFlat.search with one row): the fused kernel splits its coarse
# step (by ranges of centroids) and its scan (by runs of rows) over threads when every
# run gets at least this many rows of 64 features (~130k multiply-adds, ~15 us on one
# core). A parallel launch costs ~3-5 us here when the pool was used in the last 0.1 ms,
# ~40 us after 1 ms idle, and much more when other processes keep the cores busy
# (measured once: 2 threads at glove-50 nprobe=64 ran at 1/50 of one thread under
# load); use numba_ivf.threads(1) on a shared machine. Measured against 16384 rows,
# interleaved in one process (asv_bench/compare_ivfflat.py shape, 300 queries): 1.2-1.4x
# the QPS on fashion-mnist-784 at nprobe 8-16 (the scan of 3 MB of centroids per query
# is split), equal on glove-50.
IVF_ONE_QUERY_MIN_RUN = 2048

# -- PQ fast-scan --------------------------------------------------------------------
# Vectors per packed block: one 32-byte load holds two sub-quantizers' 4-bit codes
# for 32 vectors.
FASTSCAN_BLOCK = 32
# Largest value a quantized 4-bit LUT sum may reach: the uint16 accumulator bound.
FASTSCAN_ACC_MAX = 65535
# Blocks per prange task when one list is scanned by several threads (8192 vectors:
# large enough to amortise scheduling, small enough to balance 2-8 threads on 100k).
FASTSCAN_LIST_CHUNK_BLOCKS = 256
# Most sub-quantizers quantize_lut accepts: the rounding slack M/2 of the uint16 bound
# proof must stay far below FASTSCAN_ACC_MAX (see fastscan.quantize_lut_into).
FASTSCAN_MAX_M = 4096
# Environment variable that forces a fast-scan backend (portable|avx2|avx512|neon|auto).
FASTSCAN_ENV = "NUMBA_IVF_FASTSCAN"

# -- persistence (on-disk index files) ---------------------------------------------
# Bytes moved per write/read/checksum step. Large enough that syscall and thread
# hand-off overhead is negligible (200 steps for 200 MB), small enough that a chunk is
# still in cache when crc32 runs over it right after the copy (measured: 1 MiB chunks
# saved ~20% of a 200 MB write or read against 16 MiB), and a bound on the extra memory
# used to convert a non-contiguous array.
PERSIST_IO_CHUNK_BYTES = 1024 * 1024

# -- datasets and benchmark harness --------------------------------------------------
# Exact ground truth works in (query block) x (base block) float64 score tiles of at
# most this many bytes, so memory stays bounded whatever the dataset size.
GT_BATCH_BYTES = 32 * 1024 * 1024
# A timed repeat of a search point lasts at least this long: faster calls are run
# several times per repeat (at most BENCH_MAX_INNER) and the time divided.
BENCH_MIN_REPEAT_S = 0.2
BENCH_MAX_INNER = 1000

# -- IVF-PQ ------------------------------------------------------------------------
# 8-bit L2-by-residual scan: a list's table is qlut + term[list]. Building that sum costs
# m * ksub adds; summing the two tables per code costs m extra adds (and loads) per row.
# So the two tables are summed per code only for lists shorter than
# PQ_LUT_BUILD_MIN_ROWS * ksub rows (break-even 1) AND while both fit in L1 together
# (m * ksub * 8 bytes <= PQ_LUT_TWO_TABLES_MAX_BYTES): at fashion-mnist-784's m=56 they
# take 114 KB, and the second load per code came from L2 (0.5-0.6x FAISS's QPS, which
# always builds the sum).
PQ_LUT_BUILD_MIN_ROWS = 1
PQ_LUT_TWO_TABLES_MAX_BYTES = 32 * 1024
# Re-ranking prefetches the first lines of every candidate's row before computing any
# distance (the hardware prefetcher follows the rest of a long row).
REFINE_PREFETCH_LINES = 4
# Default and largest refine factor (candidates re-ranked exactly = k_factor * k).
PQ_REFINE_K_FACTOR = 4
PQ_REFINE_K_FACTOR_MAX = 1024
# Training rows for the PQ codebooks: at most ksub * this many residuals (as FAISS).
PQ_TRAIN_MAX_POINTS_PER_CENTROID = 256
# IVFPQ.add encodes this many rows at a time (their residuals and sub-vectors are the
# temporaries: 65536 rows of d=96 float32 residuals take 24 MiB, as FAISS's blocks of
# 65536 in IndexIVFFastScan.add_with_ids), so that an add's extra memory does not grow
# with the size of its batch: the residuals of a whole 500k-row chunk were as large as
# the chunk.
PQ_ENCODE_BLOCK_ROWS = 65536
# A few queries are scanned on one thread unless their probed lists hold at least this
# many codes per thread (below that, waking the pool costs more than the scan).
PQ_SINGLE_MIN_ROWS = 8192
# 4-bit codes: that many rows times PQ4_SINGLE_BYTES_PER_ROW / ceil(m / 2), i.e. 256 KiB
# of packed codes per thread, since a fast-scan row costs in proportion to its bytes.
# Measured one query per call, 2 threads against 1 (2 vCPUs, AVX2): glove-50 m=25 (13
# bytes a row) split at 20k rows took 1.16x one thread's time and tied at 40k;
# gcide-minilm-384 m=96 (48 bytes) gained 0.97 / 0.92 / 0.88x at 15k / 20k / 30k rows.
PQ4_SINGLE_BYTES_PER_ROW = 32


# -- value range (inputs whose squares overflow float32) -----------------------------
# Every vector and query an index takes must satisfy max |value| <= VALUE_LIMIT(d) =
# sqrt(FLT_MAX / (VALUE_LIMIT_FACTOR * d)), so that every float32 the library computes
# from them stays finite. With |x|, |q| <= B: centroids are means (|c| <= B, a split
# nudges them by 2**-10), residuals and PQ codebooks |r| <= 2B. The largest sums are
# then the L2-by-residual PQ keys ||q - c||^2 + sum_j (||r_j||^2 + 2 c_j.r_j - 2 q_j.r_j)
# <= 4dB^2 + 12dB^2 = 16 d B^2 (every partial sum is bounded by the sum of the absolute
# values, so the order does not matter); flat and refine L2 keys and coarse distances
# are <= 4dB^2, inner products <= 3dB^2. A factor 32 leaves 2x for rounding and split
# nudges, and works for every d: d=128 gives 2.9e17, d=1e6 3.3e15. Fixed bounds (1e15)
# need a cap on d, which the library does not have.
VALUE_LIMIT_FACTOR = 32
# A ProductQuantizer is trained on (and encodes) residuals x - c of vectors within the
# limit, so it accepts twice the limit: its own sums ||v - cb||^2 <= d (4B)^2 = 16dB^2.
PQ_VALUE_LIMIT_FACTOR = 2

# -- filtered search ------------------------------------------------------------------
# A probed list whose allowed rows are fewer than this fraction of its rows is scanned
# sparsely: only the set bits of its row bitmap are visited (one key at a time), instead
# of every row scored and the allowed ones admitted.
FILTER_SPARSE_FRACTION = 0.25
# A filtered search probes lists in coarse order past nprobe until the allowed rows it
# has covered reach FILTER_MIN_CANDIDATES_FACTOR * k (the default of min_candidates).
FILTER_MIN_CANDIDATES_FACTOR = 10
# When a filter allows at most FILTER_EXACT_ROWS_PER_LIST * nlist live rows, an index
# with stored vectors (IVFFlat, refine) searches exactly over them (no coarse step):
# the coarse step alone costs nlist dot products. Measured with IVFFlat, nlist 1024,
# random allowed rows, against the IVF plan at nprobe 8 / min_candidates 10 k
# (asv_bench/compare_filter_exact.py; time ivf / exact, > 1: exact faster):
#   rows/nlist                 0.25   0.5    1     2     4
#   glove-50 batch            44.3   6.6   3.8   1.1   0.9
#   glove-50 one query         1.02  1.14  1.01  0.93  0.53   (ivf recall 0.95 ... 0.67)
#   fashion-784 batch         17.6   4.1   1.2   0.34  0.05
#   fashion-784 one query      3.8   1.9   0.66  0.34  0.15   (ivf recall 1.0 ... 0.96)
# At 1 exact is as fast or faster except fashion one query (0.66x, for recall 0.997 ->
# 1), and it returns the exact answer.
FILTER_EXACT_ROWS_PER_LIST = 1.0
# An exact filtered search gathers a filter's rows into one contiguous run when at least
# this many queries share it (the copy is paid once, the keys then come four rows at a
# time); fewer queries read the rows in place.
FILTER_EXACT_GATHER_MIN_QUERIES = 16
# The one-query exact kernel of IVF-PQ + refine prefetches each allowed row this many
# rows ahead (a power of two: a ring buffer). The allowed rows sit at random places in
# the arena; measured (100k x 64, 1009 allowed rows): 64 us without prefetch, 42-45 us
# at 4-16 ahead, 47 us at 32.
FILTER_EXACT_PREFETCH_ROWS = 8
# Per-query filters are turned into bitmaps for at most this many bytes at a time;
# a larger batch is searched in chunks of queries.
FILTER_BITMAP_MAX_BYTES = 256 * 1024 * 1024

# -- range search ---------------------------------------------------------------------
# A range search writes each query's results once, into a buffer segment as long as its
# probed (allowed) rows, then compacts them (kernels/range_scan). The buffers of one
# kernel call hold at most this many bytes (12 per probed row: key and id); a larger
# batch runs in chunks of queries. np.empty leaves untouched pages unmapped, so a
# tight radius costs little of it.
RANGE_BUFFER_MAX_BYTES = 256 * 1024 * 1024

# -- sharded index (numba_ivf.dask) -----------------------------------------------------
# add() of an in-memory array or a memmap sends (or has the workers read) chunks of this
# many rows; each is checked, assigned and encoded by one task.
DASK_ADD_CHUNK_ROWS = 65536
# While waiting for pinned tasks the client checks this often (seconds) whether their
# workers are still alive: a task pinned to a worker that left would wait forever.
DASK_LIVENESS_POLL_S = 0.5
# Lists are dealt to shards by the rows a sample of the training set (at most this many
# rows per list) assigns to them.
DASK_BALANCE_SAMPLE_PER_LIST = 64
# With refine, a sharded batch of at least this many queries re-ranks in a second round
# only the k_factor * k candidates the merge picked (a round trip costs ~2 ms; one round
# re-ranks k_factor * k per shard and query).
DASK_REFINE_TWO_ROUNDS_MIN_QUERIES = 64
# A sharded batch of at least twice this many queries is sent in chunks of about this
# many, so that the client's coarse step of one overlaps the shards' scan of the last.
DASK_SEARCH_CHUNK_ROWS = 2048

# -- PQ training (batched sub-space k-means) ---------------------------------------
# kernels/encode/pq_train runs every sub-space's Lloyd loop on one thread and assigns
# its rows in tiles of this many (KMeans's largest tile): the tile's best scores and
# labels stay in L1 while the sub-space's centroid panels are walked.
PQ_TRAIN_TILE_ROWS = ASSIGN_MR * 128

# -- RaBitQ (IVFRaBitQ) ----------------------------------------------------------------
# Vectors are zero-padded to a multiple of this many dimensions: the sign bits are read
# four dimensions per nibble and each extra-bit plane is stored as whole bytes.
RABITQ_DIM_ALIGN = 8
# epsilon_0 of the 1-bit screening bound, in units of the estimator's standard
# deviation ||q'|| E1 (Gao & Long 2024): the error is about Gaussian, so 1.9 misses the
# bound on one side for ~3 % of pairs (the paper's and FAISS's choice), 2.6 for < 0.5 %
# (tests/test_rabitq.py measures both). A miss costs recall only for a neighbour near
# the k-th key; search(epsilon=...) trades it against speed.
RABITQ_EPSILON = 1.9
# The multi-bit code of a vector picks its scale among this many clip levels of max|o|
# (the one with the best cosine between the quantized and the true direction).
RABITQ_SCALE_STEPS = 64
# Per-row allowance of the uint8 screening table, in quantization steps: 0.5 for
# rounding to nearest, plus the float32 rounding of the table entries and of the row
# minima (kernels/rabitq/rabitq_scan.quantize_table).
RABITQ_LUT_SLACK = 0.5005
# rotation="dense": fewer rows than this are rotated by a serial Numba kernel, more by
# numpy's GEMM (one query through BLAS cost 1-10 ms beside Numba's threads; the kernel
# ~0.14 ms at D=784, streaming the matrix).
RABITQ_ROTATE_BLAS_MIN_ROWS = 64
# Rounds of the structured rotation (random signed permutation + block Walsh-Hadamard):
# recall equal to the dense Haar rotation's on the three datasets with 3 (measured in
# tests/test_rabitq.py on synthetic data and in README's sweep).
RABITQ_FHT_ROUNDS = 3
