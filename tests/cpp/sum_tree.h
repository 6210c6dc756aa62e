// A symbolic accumulator for the emulator: instead of adding numbers, it records the order of
// the additions.  Two sums with the same Tree give the same bits for any data (IEEE addition is
// deterministic and commutative, so a node's hash ignores the order of its two operands);
// different Trees may differ.  Adding a zero is the identity (0 + x == x in IEEE arithmetic
// except for x == -0, whose sum would print as +0).
//
// Leaf<U> is a stand-in element of sizeof(U) bytes that carries its column index, so the
// emulator runs the launch shapes of 2-, 4- and 8-byte elements.
#pragma once

#include <cstdint>

namespace ntm::emu {

inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename U>
struct Leaf {
  U index;
};

struct Tree {
  uint64_t hash = 0;       // the shape of the addition tree over the leaves' indices
  uint64_t count = 0;      // leaves
  uint64_t index_sum = 0;  // sum and sum of squares of the leaves' indices (mod 2^64)
  uint64_t index_sq = 0;
  uint64_t height = 0;     // most additions between a leaf and the root
  uint64_t index = 0;      // the index, for a leaf

  Tree() = default;
  explicit Tree(int zero) { (void)zero; }
  template <typename U>
  explicit Tree(Leaf<U> leaf) : Tree(leaf_of(leaf.index)) {}
  template <typename U>
  explicit operator Leaf<U>() const {
    return {static_cast<U>(index)};
  }
  static Tree leaf_of(uint64_t i) {
    Tree t;
    t.hash = mix(i + 1);
    t.count = 1;
    t.index_sum = i;
    t.index_sq = i * i;
    t.index = i;
    return t;
  }
  Tree& operator+=(const Tree& o) {
    if (o.count == 0) return *this;
    if (count == 0) return *this = o;
    const uint64_t lo = hash < o.hash ? hash : o.hash, hi = hash < o.hash ? o.hash : hash;
    hash = mix(lo ^ mix(hi ^ 0x5bd1e995ull));
    count += o.count;
    index_sum += o.index_sum;
    index_sq += o.index_sq;
    height = (height > o.height ? height : o.height) + 1;
    return *this;
  }
  Tree operator-() const {
    Tree t = *this;
    t.hash = mix(t.hash ^ 0x2545f4914f6cdd1dull);
    return t;
  }
  bool same_order(const Tree& o) const { return hash == o.hash && count == o.count; }
};

// The identity map with the row sum of the leaves, for kIn inputs and kOut outputs (the
// tensors whose phases decide the vector path).
template <int In, int Out>
struct TreeOp {
  using acc_t = Tree;
  static constexpr int kIn = In;
  static constexpr int kOut = Out;
  static constexpr bool kReduce = true;
  Tree operator()(const Tree (&in)[In], Tree, Tree (&out)[Out > 0 ? Out : 1]) const {
    for (int j = 0; j < Out; ++j) out[j] = in[0];
    return in[0];
  }
};

}  // namespace ntm::emu
