// The decode kernels' own test vectors, for a path the Python tests cannot load: built with
// the flags of one path (for ARM64 by a cross compiler, run under qemu-aarch64) and printed,
// so tests/test_isa_paths.py can compare every path's results with the others'.
//
// Prints one line per result: a name, then each value as the hex of its fp32 bits.
#include "../gpt2/fast/rowdot.cpp"

#include <cstdio>
#include <vector>

namespace {

uint32_t state = 12345;

float uniform() {  // in [-1, 1), the same sequence on every machine
    state = state * 1664525u + 1013904223u;
    return float(state >> 8) / float(1u << 23) - 1.0f;
}

std::vector<float> randoms(size_t n, float scale = 1.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = uniform() * scale;
    return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    return h;
}

void print(const char* name, const float* v, size_t n) {
    std::printf("%s", name);
    for (size_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, &v[i], 4);
        std::printf(" %08x", u);
    }
    std::printf("\n");
}

// A product of `rows` rows: weights of kind w_kind (with per-row scales for int8), bias, GELU.
void product(const char* name, int w_kind, int x_kind, int64_t out, int64_t in, int64_t rows) {
    std::vector<float> w = randoms(size_t(out * in)), x = randoms(size_t(rows * in), 3.0f), bias = randoms(size_t(out));
    std::vector<uint16_t> w16 = to_bf16(w), x16 = to_bf16(x);
    std::vector<int8_t> w8(w.size());
    std::vector<float> scales(size_t(out), 1.0f / 127);
    for (size_t i = 0; i < w.size(); ++i) w8[i] = int8_t(std::nearbyint(w[i] * 127));
    const void* wp = w_kind == F32 ? static_cast<const void*>(w.data())
                     : w_kind == BF16 ? static_cast<const void*>(w16.data()) : static_cast<const void*>(w8.data());
    Product p{wp, w_kind == I8 ? scales.data() : nullptr, bias.data(), out, in, w_kind, F32, F32, F32, 1};
    std::vector<float> y(size_t(rows * out));
    gpt2_rowdot(&p, x_kind == F32 ? static_cast<const void*>(x.data()) : x16.data(), x_kind, rows, y.data(), 2);
    print(name, y.data(), y.size());
}

}  // namespace

int main() {
    std::printf("isa %d\n", gpt2_rowdot_isa());
    product("fp32", F32, F32, 37, 100, 3);
    product("fp32-wide", F32, F32, 64, 768, 5);
    product("bf16-weights", BF16, F32, 40, 70, 2);
    product("bf16-rows", BF16, BF16, 33, 96, 2);
    product("int8", I8, F32, 50, 200, 3);
    product("int8-bf16-rows", I8, BF16, 20, 768, 6);
    product("int8-odd", I8, F32, 7, 45, 1);

    const int64_t rows = 3, C = 130;
    std::vector<float> x = randoms(size_t(rows * C), 2.0f), g = randoms(size_t(C)), b = randoms(size_t(C));
    std::vector<float> y(x.size());
    gpt2_layer_norm(x.data(), F32, g.data(), b.data(), F32, 1e-5f, y.data(), F32, rows, C);
    print("layer_norm", y.data(), y.size());

    const int64_t heads = 2, hd = 24, max_len = 9, pos = 6;  // one row, one layer
    std::vector<float> k = randoms(size_t(heads * max_len * hd)), v = randoms(size_t(heads * max_len * hd));
    std::vector<float> qkv = randoms(size_t(3 * heads * hd), 2.0f), att(size_t(heads * hd));
    const int64_t stride = 0, len = max_len, at = pos;
    void* k_base = k.data();
    void* v_base = v.data();
    gpt2_decode_attention(qkv.data(), F32, 3 * heads * hd, &k_base, &v_base, F32, &stride, 0, &len, &at, att.data(),
                          F32, heads * hd, 1, heads, hd, 1);
    print("attention", att.data(), att.size());
    std::vector<uint16_t> k16 = to_bf16(k), v16 = to_bf16(v), qkv16 = to_bf16(qkv);  // a bf16 cache
    k_base = k16.data();
    v_base = v16.data();
    gpt2_decode_attention(qkv16.data(), BF16, 3 * heads * hd, &k_base, &v_base, BF16, &stride, 0, &len, &at,
                          att.data(), F32, heads * hd, 1, heads, hd, 1);
    print("attention-bf16-cache", att.data(), att.size());

    std::vector<float> logits = randoms(1000);
    logits[417] = 5.0f;
    int64_t best = -1;
    gpt2_argmax(logits.data(), 1, 1000, &best);
    float best_f = float(best);
    print("argmax", &best_f, 1);
    return 0;
}
