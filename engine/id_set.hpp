#pragma once
// A set of task ids that stays small however many it holds: what a journal records as
// done, per mode, for --resume and for refusing a second ok line of one task.

#include <array>
#include <cstdint>
#include <map>
#include <memory>

#include "task.hpp"

namespace taskfarm {

// Ids in chunks of 65,536: a chunk with some ids is a bitmap (8 KiB), a full chunk is a
// count alone, an empty one is absent. A journal of a whole plan, in any order, ends as
// a few bytes per 65,536 tasks; the worst case (every other id) is one bit per id.
class IdSet {
public:
    IdSet() = default;
    IdSet(IdSet&&) = default;
    IdSet& operator=(IdSet&&) = default;
    IdSet(const IdSet&) = delete;  // large, and never needed twice
    IdSet& operator=(const IdSet&) = delete;

    // Adds `id`; false if it was there already.
    bool insert(TaskId id);
    bool contains(TaskId id) const;
    // Removes `id`; false if it was not there.
    bool erase(TaskId id);
    std::uint64_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

private:
    static constexpr unsigned kChunkBits = 16;
    static constexpr std::uint64_t kChunkIds = std::uint64_t{1} << kChunkBits;
    struct Chunk {
        std::uint64_t count = 0;
        std::unique_ptr<std::array<std::uint64_t, kChunkIds / 64>> bits;  // null when count is 0 or kChunkIds
    };
    std::map<std::uint64_t, Chunk> chunks_;  // by id >> kChunkBits
    std::uint64_t size_ = 0;
};

inline bool IdSet::insert(TaskId id) {
    Chunk& chunk = chunks_[id >> kChunkBits];
    if (chunk.count == kChunkIds) return false;
    if (!chunk.bits) chunk.bits = std::make_unique<std::array<std::uint64_t, kChunkIds / 64>>();
    const std::uint64_t offset = id & (kChunkIds - 1);
    std::uint64_t& word = (*chunk.bits)[offset / 64];
    const std::uint64_t bit = std::uint64_t{1} << (offset % 64);
    if (word & bit) return false;
    word |= bit;
    ++size_;
    if (++chunk.count == kChunkIds) chunk.bits.reset();
    return true;
}

inline bool IdSet::erase(TaskId id) {
    const auto found = chunks_.find(id >> kChunkBits);
    if (found == chunks_.end()) return false;
    Chunk& chunk = found->second;
    if (chunk.count == kChunkIds) {  // a full chunk is a count alone: its bits again, all set
        chunk.bits = std::make_unique<std::array<std::uint64_t, kChunkIds / 64>>();
        chunk.bits->fill(~std::uint64_t{0});
    }
    const std::uint64_t offset = id & (kChunkIds - 1);
    std::uint64_t& word = (*chunk.bits)[offset / 64];
    const std::uint64_t bit = std::uint64_t{1} << (offset % 64);
    if (!(word & bit)) return false;
    word &= ~bit;
    --size_;
    if (--chunk.count == 0) chunks_.erase(found);
    return true;
}

inline bool IdSet::contains(TaskId id) const {
    const auto found = chunks_.find(id >> kChunkBits);
    if (found == chunks_.end()) return false;
    const Chunk& chunk = found->second;
    if (chunk.count == kChunkIds) return true;
    const std::uint64_t offset = id & (kChunkIds - 1);
    return ((*chunk.bits)[offset / 64] >> (offset % 64)) & 1;
}

}  // namespace taskfarm
