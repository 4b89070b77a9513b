// Decode-time kernels for a few rows at once, each row computed exactly as if it were alone.
//
// gpt2_rowdot: y[b, o] = act(scale[o] * dot(w[o, :], x[b, :]) + bias[o]).
// gpt2_decode_attention: one new token per row attending over that row's own KV cache.
//
// Batch-invariant by construction: a row's result never depends on how many rows come
// with it, which tile they fall in, or the number of threads. Every (b, o) dot product is
// one 16-lane accumulator taking the blocks of k in order, reduced the same way; the
// epilogue (scale, bias, GELU, rounding) is the same per element; attention is per (row,
// head). Memory-bound, so weight rows are the outer loop: a few weight rows at a time are
// read once per call and applied to every input row while they sit in L1.
//
// Built on first use by gpt2/fast/rowdot.py with `-O3 -march=native -fopenmp
// -ffp-contract=off`: no implicit FMA contraction, every fused multiply-add is written out.
// AVX-512 (F, BW, VL; bf16 rows through vdpbf16ps with AVX512_BF16) where the compiler
// targets it, portable loops otherwise (or with -DGPT2_PORTABLE).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <omp.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(GPT2_PORTABLE)
#define GPT2_AVX512 1
#include <immintrin.h>
#if defined(__AVX512BF16__)
#define GPT2_AVX512_BF16 1
#endif
#endif

#define UNROLL _Pragma("GCC unroll 16")

namespace {

enum Kind { F32 = 0, BF16 = 1, I8 = 2 };
constexpr int LANES = 16;  // fp32 lanes of one accumulator
constexpr int ROW_TILE = 8;  // input rows sharing one pass over a weight row

int64_t elem_size(int kind) { return kind == F32 ? 4 : kind == BF16 ? 2 : 1; }

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, as torch's .to(bfloat16)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

inline float load1(int kind, const void* p, int64_t i) {
    return kind == F32 ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

inline void store1(int kind, void* p, int64_t i, float v) {
    if (kind == F32) static_cast<float*>(p)[i] = v;
    else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

#if GPT2_AVX512
// ---- AVX-512 ---------------------------------------------------------------------------------
inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1); }

inline __m512 load_f32(int kind, const void* p, int64_t i, __mmask16 m) {  // F32 or BF16 -> fp32
    if (kind == F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int WK> inline __m512 load_w(const char* w, int64_t k, __mmask16 m) {
    if constexpr (WK == I8) {
        __m128i q = _mm_maskz_loadu_epi8(m, reinterpret_cast<const int8_t*>(w) + k);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
    } else {
        return load_f32(WK, w, k, m);
    }
}

// The same bytes of the next tile's weight rows, a tile ahead. One row streams on its own
// (the hardware prefetcher follows it); with several rows to compute per weight, the loads
// stop running ahead without this (Zen 4, 1 thread: int8 x 8 rows 16.4 -> 11.6 ms for a
// step's 48 matrices, x 4 rows 11.6 -> 8.9).
template <int OT> __attribute__((always_inline)) inline void prefetch_next_tile(const char* w, int64_t w_row,
                                                                                int64_t byte) {
    UNROLL for (int t = 0; t < OT; ++t) _mm_prefetch(w + (t + OT) * w_row + byte, _MM_HINT_T0);
}

// fp32 rows: one block is 16 values of k; acc[t * R + r] += w[t][k:k+16] * x[r][k:k+16] for
// OT weight rows t and R input rows r, the last block masked to the n values left.
template <int WK, int OT, int R> struct FmaBlock {
    static constexpr int64_t size = LANES;
    using Row = float;
    __attribute__((always_inline)) static void step(__m512 (&acc)[OT * R], const char* w, int64_t w_row,
                                                    const float* x, int64_t xs, int64_t k, int64_t n) {
        __mmask16 m = mask16(n);
        if constexpr (R > 1) prefetch_next_tile<OT>(w, w_row, k * elem_size(WK));
        __m512 wv[OT];
        UNROLL for (int t = 0; t < OT; ++t) wv[t] = load_w<WK>(w + t * w_row, k, m);
        UNROLL for (int r = 0; r < R; ++r) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + r * xs + k);
            UNROLL for (int t = 0; t < OT; ++t) acc[t * R + r] = _mm512_fmadd_ps(wv[t], xv, acc[t * R + r]);
        }
    }
};

#if GPT2_AVX512_BF16
// bf16 rows: one block is 32 values of k, vdpbf16ps adds the products of pairs (2l, 2l + 1)
// into lane l. int8 weights become bf16 first, exactly (|w| <= 128).
template <int WK> inline __m512bh load_w_bf16(const char* w, int64_t k, __mmask32 m) {
    if constexpr (WK == BF16) {
        return (__m512bh)_mm512_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(w) + k);
    } else {
        __m256i q = _mm256_maskz_loadu_epi8(m, reinterpret_cast<const int8_t*>(w) + k);
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
        return _mm512_cvtne2ps_pbh(hi, lo);
    }
}

template <int WK, int OT, int R> struct DotBlock {
    static constexpr int64_t size = 2 * LANES;
    using Row = uint16_t;
    __attribute__((always_inline)) static void step(__m512 (&acc)[OT * R], const char* w, int64_t w_row,
                                                    const uint16_t* x, int64_t xs, int64_t k, int64_t n) {
        __mmask32 m = mask32(n);
        if constexpr (R > 1) prefetch_next_tile<OT>(w, w_row, k * (WK == I8 ? 1 : 2));
        __m512bh wv[OT];
        UNROLL for (int t = 0; t < OT; ++t) wv[t] = load_w_bf16<WK>(w + t * w_row, k, m);
        UNROLL for (int r = 0; r < R; ++r) {
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + r * xs + k);
            UNROLL for (int t = 0; t < OT; ++t) acc[t * R + r] = _mm512_dpbf16_ps(acc[t * R + r], xv, wv[t]);
        }
    }
};
#endif

// z[r * zs + t] = dot(w[t], x[r]) for OT weight rows (w_row bytes apart) and R input rows:
// one accumulator per (t, r) takes the blocks of k in order (the last one masked if `in` is
// not a multiple of the block), then is reduced: the same order for any tile shape.
template <class Block, int OT, int R>
void tile(const char* w, int64_t w_row, int64_t in, const void* xv, int64_t xs, float* z, int64_t zs) {
    using Row = typename Block::Row;
    const Row* x = static_cast<const Row*>(xv);
    constexpr int64_t S = Block::size;
    __m512 acc[OT * R];
    UNROLL for (int i = 0; i < OT * R; ++i) acc[i] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + S <= in; k += S) Block::step(acc, w, w_row, x, xs, k, S);
    if (k < in) Block::step(acc, w, w_row, x, xs, k, in - k);
    UNROLL for (int t = 0; t < OT; ++t)
        UNROLL for (int r = 0; r < R; ++r) z[r * zs + t] = _mm512_reduce_add_ps(acc[t * R + r]);
}

// exp(v): Cody-Waite reduction and a degree-6 polynomial (~1 ulp); clamped to +-88.
inline __m512 exp512(__m512 v) {
    v = _mm512_max_ps(_mm512_min_ps(v, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// GPT-2's tanh GELU: 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3).
inline __m512 gelu512(__m512 v) {
    __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                             _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
    __m512 e = exp512(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f)));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

inline void store_f32(int kind, void* p, int64_t i, __m512 v, __mmask16 m) {
    if (kind == F32) {
        _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
        return;
    }
    __m512i u = _mm512_castps_si512(v);  // round to nearest even, NaN kept: as f32_to_bf16
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    rounded = _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u,
                                   _mm512_set1_epi32(0x400000));
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}

// y[o0:o1] = act(z * scale + bias) for one row, 16 outputs at a time.
void epilogue(const float* z, const void* scales, int scale_kind, const void* bias, int bias_kind,
              int gelu, void* y, int y_kind, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; o += LANES) {
        __mmask16 m = mask16(o1 - o);
        __m512 v = _mm512_maskz_loadu_ps(m, z + o);
        if (scales) v = _mm512_mul_ps(v, load_f32(scale_kind, scales, o, m));
        if (bias) v = _mm512_add_ps(v, load_f32(bias_kind, bias, o, m));
        if (gelu) v = gelu512(v);
        store_f32(y_kind, y, o, v, m);
    }
}

// y[0:n] = w[0:n] * scale, rounded once to y's kind (as torch's w.to(dtype) * scale).
void dequantize_row(const int8_t* w, float scale, void* y, int y_kind, int64_t n) {
    __m512 sv = _mm512_set1_ps(scale);
    for (int64_t k = 0; k < n; k += LANES) {
        __mmask16 m = mask16(n - k);
        __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + k)));
        store_f32(y_kind, y, k, _mm512_mul_ps(v, sv), m);
    }
}

inline float dot_f32(const float* a, const float* b, int64_t n) {  // fixed order
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = mask16(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

// s[0:n] = exp(s - max); returns their sum (lanes, then a fixed reduction).
float exp_shift_sum(float* s, int64_t n, float max) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += LANES) {
        __mmask16 m = mask16(n - j);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), _mm512_set1_ps(max)));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(s + j, m, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

// out[0:n] += p * v[0:n]
inline void axpy(float* out, float p, const float* v, int64_t n) {
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = mask16(n - i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(_mm512_set1_ps(p), _mm512_maskz_loadu_ps(m, v + i),
                                                          _mm512_maskz_loadu_ps(m, out + i)));
    }
}

// LayerNorm of one row of n: mean and variance in fp32, each summed in 16 lanes and then a
// fixed reduction; y = ((x - mean) * rstd) * w + b (w and b null: no affine part), rounded
// once to y's kind.
void layer_norm_row(const void* x, int x_kind, const void* w, const void* b, int p_kind, float eps, void* y,
                    int y_kind, int64_t n) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += LANES) sum = _mm512_add_ps(sum, load_f32(x_kind, x, k, mask16(n - k)));
    const float mean = _mm512_reduce_add_ps(sum) / float(n);
    const __m512 mv = _mm512_set1_ps(mean);
    __m512 sq = _mm512_setzero_ps();
    for (int64_t k = 0; k < n; k += LANES) {
        __mmask16 m = mask16(n - k);
        __m512 d = _mm512_maskz_sub_ps(m, load_f32(x_kind, x, k, m), mv);
        sq = _mm512_fmadd_ps(d, d, sq);
    }
    const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(sq) / float(n) + eps));
    for (int64_t k = 0; k < n; k += LANES) {
        __mmask16 m = mask16(n - k);
        __m512 t = _mm512_mul_ps(_mm512_sub_ps(load_f32(x_kind, x, k, m), mv), rstd);
        if (w) t = _mm512_add_ps(_mm512_mul_ps(t, load_f32(p_kind, w, k, m)), load_f32(p_kind, b, k, m));
        store_f32(y_kind, y, k, t, m);
    }
}

// y[0:n] = a[0:n] + b[0:n], the sum in fp32 rounded once to y's kind (as torch adds two
// tensors and converts the sum). y may be a.
void sum_to(void* y, int y_kind, const void* a, int a_kind, const void* b, int b_kind, int64_t n) {
    for (int64_t k = 0; k < n; k += LANES) {
        __mmask16 m = mask16(n - k);
        store_f32(y_kind, y, k, _mm512_add_ps(load_f32(a_kind, a, k, m), load_f32(b_kind, b, k, m)), m);
    }
}

// The index of the largest of x[0:n] (fp32), the first of equals; the first NaN if any (as
// torch.argmax): per lane the first strictly larger value, then the lowest index among the
// lanes holding the maximum.
int64_t argmax_row(const float* x, int64_t n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i best_at = _mm512_setzero_si512();
    __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __mmask16 nan = 0;
    for (int64_t k = 0; k < n; k += LANES) {
        __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask16(n - k), x + k);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, gt, v);
        best_at = _mm512_mask_mov_epi32(best_at, gt, at);
        at = _mm512_add_epi32(at, _mm512_set1_epi32(LANES));
    }
    if (nan)
        for (int64_t k = 0; k < n; ++k)
            if (x[k] != x[k]) return k;
    __mmask16 top = _mm512_cmp_ps_mask(best, _mm512_set1_ps(_mm512_reduce_max_ps(best)), _CMP_EQ_OQ);
    return _mm512_mask_reduce_min_epi32(top, best_at);
}

#else
// ---- portable: the same orders, in plain loops -------------------------------------------------
inline float fma1(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;  // -ffp-contract=off: rounded twice, the same way every time
#endif
}

inline float reduce16(const float* a) {  // a fixed pairwise tree
    float s[8];
    for (int i = 0; i < 8; ++i) s[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; ++i) s[i] = s[i] + s[i + 4];
    for (int i = 0; i < 2; ++i) s[i] = s[i] + s[i + 2];
    return s[0] + s[1];
}

template <int WK> inline float load_w1(const char* w, int64_t k) {
    if constexpr (WK == I8) return float(reinterpret_cast<const int8_t*>(w)[k]);
    else return load1(WK, w, k);
}

template <int WK, int OT, int R> struct FmaBlock {  // fp32 rows; the weights' kind
    static constexpr int kind = WK;
};

// As the AVX-512 tile: one 16-lane accumulator per (t, r) takes the blocks of k in order.
template <class Block, int OT, int R>
void tile(const char* w, int64_t w_row, int64_t in, const void* xv, int64_t xs, float* z, int64_t zs) {
    const float* x = static_cast<const float*>(xv);
    float acc[OT][R][LANES] = {};
    for (int64_t k = 0; k < in; k += LANES) {
        int64_t n = in - k < LANES ? in - k : LANES;
        for (int t = 0; t < OT; ++t) {
            float wv[LANES] = {};
            for (int64_t l = 0; l < n; ++l) wv[l] = load_w1<Block::kind>(w + t * w_row, k + l);
            for (int r = 0; r < R; ++r)
                for (int64_t l = 0; l < LANES; ++l)
                    acc[t][r][l] = fma1(wv[l], l < n ? x[r * xs + k + l] : 0.0f, acc[t][r][l]);
        }
    }
    for (int t = 0; t < OT; ++t)
        for (int r = 0; r < R; ++r) z[r * zs + t] = reduce16(acc[t][r]);
}

inline float gelu1(float v) {
    float u = 0.7978845608028654f * (v + 0.044715f * (v * v * v));
    return v / (1.0f + std::exp(-2.0f * u));
}

void epilogue(const float* z, const void* scales, int scale_kind, const void* bias, int bias_kind,
              int gelu, void* y, int y_kind, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
        float v = z[o];
        if (scales) v = v * load1(scale_kind, scales, o);
        if (bias) v = v + load1(bias_kind, bias, o);
        if (gelu) v = gelu1(v);
        store1(y_kind, y, o, v);
    }
}

void dequantize_row(const int8_t* w, float scale, void* y, int y_kind, int64_t n) {
    for (int64_t k = 0; k < n; ++k) store1(y_kind, y, k, float(w[k]) * scale);
}

inline float dot_f32(const float* a, const float* b, int64_t n) {
    float acc[LANES] = {};
    for (int64_t i = 0; i < n; i += LANES)
        for (int64_t l = 0; l < LANES; ++l) acc[l] = fma1(i + l < n ? a[i + l] : 0.0f, i + l < n ? b[i + l] : 0.0f, acc[l]);
    return reduce16(acc);
}

float exp_shift_sum(float* s, int64_t n, float max) {
    float acc[LANES] = {};
    for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - max);
        acc[j % LANES] += s[j];
    }
    return reduce16(acc);
}

inline void axpy(float* out, float p, const float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = fma1(p, v[i], out[i]);
}

void layer_norm_row(const void* x, int x_kind, const void* w, const void* b, int p_kind, float eps, void* y,
                    int y_kind, int64_t n) {
    float acc[LANES] = {};
    for (int64_t k = 0; k < n; ++k) acc[k % LANES] += load1(x_kind, x, k);
    const float mean = reduce16(acc) / float(n);
    float sq[LANES] = {};
    for (int64_t k = 0; k < n; ++k) {
        float d = load1(x_kind, x, k) - mean;
        sq[k % LANES] = fma1(d, d, sq[k % LANES]);
    }
    const float rstd = 1.0f / std::sqrt(reduce16(sq) / float(n) + eps);
    for (int64_t k = 0; k < n; ++k) {
        float t = (load1(x_kind, x, k) - mean) * rstd;
        store1(y_kind, y, k, w ? t * load1(p_kind, w, k) + load1(p_kind, b, k) : t);
    }
}

int64_t argmax_row(const float* x, int64_t n) {
    int64_t best = 0;
    for (int64_t k = 0; k < n; ++k) {
        if (x[k] != x[k]) return k;
        if (x[k] > x[best]) best = k;
    }
    return best;
}

void sum_to(void* y, int y_kind, const void* a, int a_kind, const void* b, int b_kind, int64_t n) {
    for (int64_t k = 0; k < n; ++k) store1(y_kind, y, k, load1(a_kind, a, k) + load1(b_kind, b, k));
}
#endif

// ---- products --------------------------------------------------------------------------------
using TileFn = void (*)(const char*, int64_t, int64_t, const void*, int64_t, float*, int64_t);

// Weight rows per tile for a row tile of `rows`. One for a few rows: the weights stream in
// order (several rows at a time made one row's step 2x slower, the prefetcher losing the
// stream); two for 5-8 rows, which shares each row's loads and int8's conversion (Zen 4, 1
// thread, a step's 48 matrices at 8 rows: int8 12.9 -> 9.8 ms, fp32 42.5 -> 36.1), except
// bf16 weights with bf16 rows, which have nothing to convert (17.2 -> 19.3: one is better).
constexpr int out_tile(int rows, bool bf16_dot) { return rows <= 4 || bf16_dot ? 1 : 2; }

template <template <int, int, int> class Block, int WK, int OT> TileFn pick_rows(int rows) {
    switch (rows) {
        case 1: return tile<Block<WK, OT, 1>, OT, 1>;
        case 2: return tile<Block<WK, OT, 2>, OT, 2>;
        case 3: return tile<Block<WK, OT, 3>, OT, 3>;
        case 4: return tile<Block<WK, OT, 4>, OT, 4>;
        case 5: return tile<Block<WK, OT, 5>, OT, 5>;
        case 6: return tile<Block<WK, OT, 6>, OT, 6>;
        case 7: return tile<Block<WK, OT, 7>, OT, 7>;
        default: return tile<Block<WK, OT, 8>, OT, 8>;
    }
}

template <template <int, int, int> class Block, int WK> TileFn pick_tile(int ot, int rows) {
    return ot == 2 ? pick_rows<Block, WK, 2>(rows) : pick_rows<Block, WK, 1>(rows);
}

TileFn pick(int w_kind, bool bf16_rows, int ot, int rows) {
#if GPT2_AVX512_BF16
    if (bf16_rows) return w_kind == BF16 ? pick_tile<DotBlock, BF16>(ot, rows) : pick_tile<DotBlock, I8>(ot, rows);
#endif
    (void)bf16_rows;
    if (w_kind == F32) return pick_tile<FmaBlock, F32>(ot, rows);
    if (w_kind == BF16) return pick_tile<FmaBlock, BF16>(ot, rows);
    return pick_tile<FmaBlock, I8>(ot, rows);
}

// Run work(lo, hi) over [0, n) split in `threads` contiguous parts (0: OpenMP's setting for
// this thread, which torch.set_num_threads sets); no parallel region for one part.
template <class Work> void parallel(int threads, int64_t n, int64_t align, Work work) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    int64_t per = ((n + nt - 1) / nt + align - 1) / align * align;
    if (nt == 1 || per >= n) {
        work(int64_t(0), n);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t lo = omp_get_thread_num() * per;
        int64_t hi = lo + per < n ? lo + per : n;
        if (lo < hi) work(lo, hi);
    }
}

}  // namespace

extern "C" {

// Which code this build runs: 2 = AVX-512 with bf16 dot products, 1 = AVX-512, 0 = portable.
int gpt2_rowdot_isa() {
#if GPT2_AVX512_BF16
    return 2;
#elif GPT2_AVX512
    return 1;
#else
    return 0;
#endif
}

// A product's weights, described once per layer (gpt2/fast/rowdot.py caches these): w is
// out x in, contiguous, F32, BF16 or I8; scales (per output row, I8 weights) and bias may be
// null; the output is F32 or BF16, with GPT-2's tanh GELU if gelu.
struct Product {
    const void* w;
    const void* scales;
    const void* bias;
    int64_t out, in;
    int32_t w_kind, scale_kind, bias_kind, y_kind, gelu;
};

// y[b, o] for b < rows: x is rows x in (contiguous, F32 or BF16), y rows x out (contiguous).
// Returns 0, or -1 if out of memory.
int gpt2_rowdot(const Product* p, const void* x, int x_kind, int64_t rows, void* y, int threads) {
    const int64_t out = p->out, in = p->in;
    if (rows <= 0 || out <= 0) return 0;
    bool bf16_rows = false;  // bf16 rows straight into vdpbf16ps
#if GPT2_AVX512_BF16
    bf16_rows = x_kind == BF16 && p->w_kind != F32;
#endif
    float* x32 = nullptr;  // otherwise rows in fp32 (exact for bf16)
    if (x_kind != F32 && !bf16_rows) {
        x32 = static_cast<float*>(std::malloc(sizeof(float) * rows * in));
        if (!x32) return -1;
        for (int64_t i = 0; i < rows * in; ++i) x32[i] = load1(x_kind, x, i);
    }
    const char* xb = x32 ? reinterpret_cast<const char*>(x32) : static_cast<const char*>(x);
    int64_t x_row_bytes = in * (x32 ? 4 : elem_size(x_kind));
    bool direct = p->y_kind == F32 && !p->scales && !p->bias && !p->gelu;  // dot products straight into y
    float* z = direct ? static_cast<float*>(y) : static_cast<float*>(std::malloc(sizeof(float) * rows * out));
    if (!z) {
        std::free(x32);
        return -1;
    }
    const char* wb = static_cast<const char*>(p->w);
    int64_t w_row = in * elem_size(p->w_kind);
    if (rows * out * in < (1 << 16)) threads = 1;  // too little work to share
    const int ot = out_tile(int(rows < ROW_TILE ? rows : ROW_TILE), bf16_rows && p->w_kind == BF16);
    parallel(threads, out, LANES, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1;) {
            int step = o1 - o >= ot ? ot : 1;  // the last few weight rows one at a time
            for (int64_t rb = 0; rb < rows; rb += ROW_TILE) {  // the weight tile stays in L1
                int r = int(rows - rb < ROW_TILE ? rows - rb : ROW_TILE);
                pick(p->w_kind, bf16_rows, step, r)(wb + o * w_row, w_row, in, xb + rb * x_row_bytes, in,
                                                     z + rb * out + o, out);
            }
            o += step;
        }
        if (!direct)
            for (int64_t r = 0; r < rows; ++r)
                epilogue(z + r * out, p->scales, p->scale_kind, p->bias, p->bias_kind, p->gelu,
                         static_cast<char*>(y) + r * out * elem_size(p->y_kind), p->y_kind, o0, o1);
    });
    if (!direct) std::free(z);
    std::free(x32);
    return 0;
}

// One decode step's attention at layer `layer`. Row b's new token sits at position pos[b] of
// its own cache: k_cache[b] + layer * layer_stride[b] (likewise v_cache) is that row's block
// of the layer, [heads, max_len[b], head_dim] fp32. Writes the token's k and v (from qkv:
// rows x 3C, row stride qkv_stride, F32 or BF16) at pos[b], then y[b] (row stride ys, F32
// or BF16) = softmax(q k^T / sqrt(head_dim)) v over keys 0..pos[b], per head.
// Returns 0, or -1 if out of memory.
int gpt2_decode_attention(const void* qkv, int qkv_kind, int64_t qkv_stride, float* const* k_base,
                          float* const* v_base, const int64_t* layer_stride, int64_t layer,
                          const int64_t* max_len, const int64_t* pos, void* y, int y_kind, int64_t ys,
                          int64_t rows, int64_t heads, int64_t head_dim, int threads) {
    int64_t C = heads * head_dim;
    int64_t longest = 0;
    for (int64_t b = 0; b < rows; ++b) longest = pos[b] + 1 > longest ? pos[b] + 1 : longest;
    auto k_cache = [&](int64_t b) { return k_base[b] + layer * layer_stride[b]; };
    auto v_cache = [&](int64_t b) { return v_base[b] + layer * layer_stride[b]; };
    for (int64_t b = 0; b < rows; ++b)  // the new keys and values first: every head reads them
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t d = 0; d < head_dim; ++d) {
                int64_t at = (h * max_len[b] + pos[b]) * head_dim + d;
                k_cache(b)[at] = load1(qkv_kind, qkv, b * qkv_stride + C + h * head_dim + d);
                v_cache(b)[at] = load1(qkv_kind, qkv, b * qkv_stride + 2 * C + h * head_dim + d);
            }
    const float scale = 1.0f / std::sqrt(float(head_dim));
    if (rows * heads * longest * head_dim < (1 << 16)) threads = 1;  // too little work to share
    int failed = 0;
    parallel(threads, rows * heads, 1, [&](int64_t lo, int64_t hi) {
        float* buf = static_cast<float*>(std::malloc(sizeof(float) * (longest + 2 * head_dim)));
        if (!buf) {
            failed = 1;
            return;
        }
        float* q = buf + longest;
        float* out = q + head_dim;
        for (int64_t i = lo; i < hi; ++i) {
            int64_t b = i / heads, h = i % heads, n = pos[b] + 1;
            const float* k = k_cache(b) + h * max_len[b] * head_dim;
            const float* v = v_cache(b) + h * max_len[b] * head_dim;
            for (int64_t d = 0; d < head_dim; ++d) q[d] = load1(qkv_kind, qkv, b * qkv_stride + h * head_dim + d) * scale;
            float max = -INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                buf[j] = dot_f32(q, k + j * head_dim, head_dim);
                max = buf[j] > max ? buf[j] : max;
            }
            float inv = 1.0f / exp_shift_sum(buf, n, max);
            for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
            for (int64_t j = 0; j < n; ++j) axpy(out, buf[j] * inv, v + j * head_dim, head_dim);
            for (int64_t d = 0; d < head_dim; ++d) store1(y_kind, y, b * ys + h * head_dim + d, out[d]);
        }
        std::free(buf);
    });
    return failed ? -1 : 0;
}

// y = w * scales[:, None] for an out x in int8 matrix, in F32 or BF16: the int8 tier's
// weights for a prefill GEMM, in one pass (torch's w.to(dtype) * scales takes two and a
// temporary), the same values. Returns 0.
int gpt2_dequantize(const int8_t* w, const void* scales, int scale_kind, void* y, int y_kind, int64_t out,
                    int64_t in, int threads) {
    if (out * in < (1 << 16)) threads = 1;
    parallel(threads, out, 1, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o)
            dequantize_row(w + o * in, load1(scale_kind, scales, o),
                           static_cast<char*>(y) + o * in * elem_size(y_kind), y_kind, in);
    });
    return 0;
}

// y[r] = LayerNorm(x[r]) for rows x n (contiguous, F32 or BF16; w and b: p_kind), y in
// y_kind. A decode step's LayerNorms (the same function the fused step below calls).
int gpt2_layer_norm(const void* x, int x_kind, const void* w, const void* b, int p_kind, float eps, void* y,
                    int y_kind, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r)
        layer_norm_row(static_cast<const char*>(x) + r * n * elem_size(x_kind), x_kind, w, b, p_kind, eps,
                       static_cast<char*>(y) + r * n * elem_size(y_kind), y_kind, n);
    return 0;
}

// The int8 tier's LM head (gpt2/fast/int8.py, Int8Head): `scan` (int8 weights with ln_f's
// gain folded in, fp32 scales and bias, fp32 out) over the LayerNorm of x without its affine
// part (eps), then each row's `rescore` best logits recomputed in fp32 from the embedding
// wte (vocab x C) and ln_f(x).
struct Int8Head {
    const Product* scan;
    float eps;
    const void* wte;
    int32_t wte_kind;
    int32_t rescore;
};

// logits (rows x vocab, fp32) of x and hidden = ln_f(x) (rows x C each, x_kind). The best are
// the largest scanned logits, the first of equals (NaN never); each is then the fp32 dot
// product of its wte row and hidden, in the products' fixed order. Returns 0, or -1 if out of
// memory.
int gpt2_int8_head(const Int8Head* h, const void* x, const void* hidden, int x_kind, int64_t rows, float* logits,
                   int threads) {
    const int64_t C = h->scan->in, V = h->scan->out, es = elem_size(x_kind);
    const int K = h->rescore;
    auto padded = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };  // each part 64-byte aligned
    const int64_t n_bytes = padded(es * rows * C), hidden_bytes = padded(sizeof(float) * C);
    char* n = static_cast<char*>(std::malloc(n_bytes + hidden_bytes + padded(sizeof(float) * K) + sizeof(int64_t) * K));
    if (!n) return -1;
    float* hidden32 = reinterpret_cast<float*>(n + n_bytes);
    float* top = reinterpret_cast<float*>(n + n_bytes + hidden_bytes);
    int64_t* top_at = reinterpret_cast<int64_t*>(n + n_bytes + hidden_bytes + padded(sizeof(float) * K));
    gpt2_layer_norm(x, x_kind, nullptr, nullptr, 0, h->eps, n, x_kind, rows, C);
    int failed = gpt2_rowdot(h->scan, n, x_kind, rows, logits, threads);
    const TileFn dot = pick(h->wte_kind, false, 1, 1);
    const int64_t w_row = C * elem_size(h->wte_kind);
    for (int64_t r = 0; r < rows && !failed; ++r) {
        float* row = logits + r * V;
        int found = 0;  // top[0:found] in descending order
        for (int64_t i = 0; i < V; ++i) {
            float v = row[i];
            if (!(found < K ? v == v : v > top[K - 1])) continue;
            int j = found < K ? found++ : K - 1;
            for (; j > 0 && v > top[j - 1]; --j) top[j] = top[j - 1], top_at[j] = top_at[j - 1];
            top[j] = v, top_at[j] = i;
        }
        for (int64_t k = 0; k < C; ++k) hidden32[k] = load1(x_kind, hidden, r * C + k);
        for (int j = 0; j < found; ++j)
            dot(static_cast<const char*>(h->wte) + top_at[j] * w_row, w_row, C, hidden32, C, row + top_at[j], 1);
    }
    std::free(n);
    return failed ? -1 : 0;
}

// One block's weights for gpt2_decode_step.
struct DecodeLayer {
    const void* ln1_w;
    const void* ln1_b;
    const void* ln2_w;
    const void* ln2_b;
    const Product* c_attn;
    const Product* attn_proj;
    const Product* c_fc;  // with GELU
    const Product* mlp_proj;
};

// A model's decode step, described once (gpt2/fast/rowdot.py): the embeddings (vocab and
// n_positions rows of C), the blocks, and the final LayerNorm and an LM head (fp32 logits),
// the tied one or the int8 tier's, where the model has one the step runs.
struct DecodeModel {
    const void* wte;
    const void* wpe;
    int64_t vocab, n_positions, C, heads, n_layers;
    int32_t wte_kind, wpe_kind, p_kind;  // p_kind: the blocks' LayerNorm weights and biases
    float eps;
    const DecodeLayer* layers;
    const void* lnf_w;
    const void* lnf_b;
    int32_t lnf_kind;
    float lnf_eps;
    const Product* head;  // the tied LM head, or null
    const Int8Head* int8_head;  // or the int8 tier's, or null
};

// One decode step in one call: row b's token ids[b] at position pos[b] of its own cache
// (see gpt2_decode_attention) through the model:
//   x = wte[id] + wpe[pos], rounded to x's kind (the blocks', as torch's (wte + wpe).to(dtype));
//   for each layer l: x += attn_proj(attention_l(c_attn(ln1(x))));  x += mlp_proj(gelu(c_fc(ln2(x))))
//   logits = head(ln_f(x)) (or the int8 head's of x and ln_f(x)) if logits is not null (and
//   the model has a head)
// with exactly the calls the per-module path makes (gpt2_layer_norm, gpt2_rowdot,
// gpt2_decode_attention, the adds rounded as torch's), so a step gives the same bits either
// way: the per-module path stays for steps with hooks (capture, knock-out). x (rows x C)
// holds the last block's output. Returns 0; -1 if out of memory; -2 if an id is outside the
// vocabulary or a position outside wpe, before anything is written.
int gpt2_decode_step(const DecodeModel* m, const int64_t* ids, int64_t rows, void* x, int x_kind, float* logits,
                     float* const* k_base, float* const* v_base, const int64_t* layer_stride,
                     const int64_t* max_len, const int64_t* pos, int threads) {
    const int64_t C = m->C, es = elem_size(x_kind);
    for (int64_t b = 0; b < rows; ++b)
        if (ids[b] < 0 || ids[b] >= m->vocab || pos[b] < 0 || pos[b] >= m->n_positions) return -2;
    for (int64_t b = 0; b < rows; ++b)
        sum_to(static_cast<char*>(x) + b * C * es, x_kind, static_cast<const char*>(m->wte) + ids[b] * C * elem_size(m->wte_kind),
               m->wte_kind, static_cast<const char*>(m->wpe) + pos[b] * C * elem_size(m->wpe_kind), m->wpe_kind, C);
    char* scratch = static_cast<char*>(std::malloc(es * rows * C * 9));  // h, qkv (3C), att, fc (4C)
    if (!scratch) return -1;
    char* h = scratch;
    char* qkv = h + es * rows * C;
    char* att = qkv + es * rows * 3 * C;
    char* fc = att + es * rows * C;
    char* proj = h;  // the LayerNorm's output is consumed before each projection writes
    int failed = 0;
    for (int64_t l = 0; l < m->n_layers && !failed; ++l) {
        const DecodeLayer& L = m->layers[l];
        gpt2_layer_norm(x, x_kind, L.ln1_w, L.ln1_b, m->p_kind, m->eps, h, x_kind, rows, C);
        failed |= gpt2_rowdot(L.c_attn, h, x_kind, rows, qkv, threads);
        failed |= gpt2_decode_attention(qkv, x_kind, 3 * C, k_base, v_base, layer_stride, l, max_len, pos, att,
                                        x_kind, C, rows, m->heads, C / m->heads, threads);
        failed |= gpt2_rowdot(L.attn_proj, att, x_kind, rows, proj, threads);
        sum_to(x, x_kind, x, x_kind, proj, x_kind, rows * C);  // elementwise: the rows x C of both at once
        gpt2_layer_norm(x, x_kind, L.ln2_w, L.ln2_b, m->p_kind, m->eps, h, x_kind, rows, C);
        failed |= gpt2_rowdot(L.c_fc, h, x_kind, rows, fc, threads);
        failed |= gpt2_rowdot(L.mlp_proj, fc, x_kind, rows, proj, threads);
        sum_to(x, x_kind, x, x_kind, proj, x_kind, rows * C);
    }
    if (!failed && (m->head || m->int8_head) && logits) {
        gpt2_layer_norm(x, x_kind, m->lnf_w, m->lnf_b, m->lnf_kind, m->lnf_eps, h, x_kind, rows, C);
        failed |= m->head ? gpt2_rowdot(m->head, h, x_kind, rows, logits, threads)
                          : gpt2_int8_head(m->int8_head, x, h, x_kind, rows, logits, threads);
    }
    std::free(scratch);
    return failed ? -1 : 0;
}

// out[r] = argmax of row r of x (rows x n, fp32, contiguous), as torch.argmax(dim=-1).
int gpt2_argmax(const float* x, int64_t rows, int64_t n, int64_t* out) {
    for (int64_t r = 0; r < rows; ++r) out[r] = argmax_row(x + r * n, n);
    return 0;
}

}  // extern "C"
