#pragma once
// The msgpack reader and writer of the protocol's hot path (decision 241): FastReader reads
// values straight from a frame's bytes, FastPacker writes what msgpack-c writes, byte for byte.
// Only common/protocol.cpp uses them; decode() there falls back to msgpack-c's object tree for
// anything FastReader declines.

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace taskfarm::proto::fast {

using Json = nlohmann::json;

// The most elements of an array or entries of a map that FastReader takes: decode()'s unpack
// limit (proto::kMaxBatch), checked there by a static_assert.
inline constexpr std::uint32_t kMaxContainer = 1024;

// Packs msgpack as msgpack-c's packer does, byte for byte (the smallest encoding of each
// number and size, doubles as float64, str8 from 32 bytes), staging the few-byte pieces in a
// buffer of its own so that `Writer::write` runs about once per 64 bytes instead of two or
// three times per field (decision 241). Flushes when destroyed.
template <typename Writer>
class FastPacker {
public:
    explicit FastPacker(Writer& writer) : writer_(writer) {}
    ~FastPacker() { flush(); }
    FastPacker(const FastPacker&) = delete;
    FastPacker& operator=(const FastPacker&) = delete;

    void flush() {
        if (used_ == 0) return;
        writer_.write(staged_, used_);
        used_ = 0;
    }

    void nil() { byte(0xc0); }
    void boolean(bool value) { byte(value ? 0xc3 : 0xc2); }
    void map(std::size_t size) { header(size, 0x80, 0xde); }
    void array(std::size_t size) { header(size, 0x90, 0xdc); }

    void unsigned_number(std::uint64_t value) {
        room(9);
        if (value < 128) {
            put(static_cast<std::uint8_t>(value));
        } else if (value < 0x100) {
            put(0xcc);
            put(static_cast<std::uint8_t>(value));
        } else if (value < 0x10000) {
            put(0xcd);
            big(value, 2);
        } else if (value < 0x100000000) {
            put(0xce);
            big(value, 4);
        } else {
            put(0xcf);
            big(value, 8);
        }
    }

    void signed_number(std::int64_t value) {
        if (value >= 0) return unsigned_number(static_cast<std::uint64_t>(value));
        room(9);
        const auto bits = static_cast<std::uint64_t>(value);
        if (value >= -32) {
            put(static_cast<std::uint8_t>(bits));
        } else if (value >= -128) {
            put(0xd0);
            put(static_cast<std::uint8_t>(bits));
        } else if (value >= -32768) {
            put(0xd1);
            big(bits, 2);
        } else if (value >= -2147483648LL) {
            put(0xd2);
            big(bits, 4);
        } else {
            put(0xd3);
            big(bits, 8);
        }
    }

    // A whole number as an integer, as msgpack-c's pack_double does (the same tests, in order).
    void number(double value) {
        if (value == value) {
            if (value >= 0 && value <= double(std::numeric_limits<std::uint64_t>::max()) &&
                value == double(std::uint64_t(value)))
                return unsigned_number(std::uint64_t(value));
            if (value < 0 && value >= double(std::numeric_limits<std::int64_t>::min()) &&
                value == double(std::int64_t(value)))
                return signed_number(std::int64_t(value));
        }
        room(9);
        put(0xcb);
        big(std::bit_cast<std::uint64_t>(value), 8);
    }

    void str(std::string_view text) {
        const std::size_t size = text.size();
        room(5);
        if (size < 32) {
            put(static_cast<std::uint8_t>(0xa0 | size));
        } else if (size < 0x100) {
            put(0xd9);
            put(static_cast<std::uint8_t>(size));
        } else if (size < 0x10000) {
            put(0xda);
            big(size, 2);
        } else {
            put(0xdb);
            big(size, 4);
        }
        bytes(text.data(), size);
    }

    void binary(const std::vector<std::uint8_t>& data) {
        const std::size_t size = data.size();
        room(5);
        if (size < 0x100) {
            put(0xc4);
            put(static_cast<std::uint8_t>(size));
        } else if (size < 0x10000) {
            put(0xc5);
            big(size, 2);
        } else {
            put(0xc6);
            big(size, 4);
        }
        bytes(reinterpret_cast<const char*>(data.data()), size);
    }

    // A value packed already.
    void raw(std::string_view packed) { bytes(packed.data(), packed.size()); }

    // As json_msgpack.hpp's pack adaptor writes it.
    void json(const Json& value) {
        using T = Json::value_t;
        switch (value.type()) {
            case T::null:
            case T::discarded: nil(); break;
            case T::boolean: boolean(value.get<bool>()); break;
            case T::number_integer: signed_number(value.get<std::int64_t>()); break;
            case T::number_unsigned: unsigned_number(value.get<std::uint64_t>()); break;
            case T::number_float: number(value.get<double>()); break;
            case T::string: str(value.get_ref<const std::string&>()); break;
            case T::binary: binary(value.get_binary()); break;
            case T::array:
                array(value.size());
                for (const Json& element : value) json(element);
                break;
            case T::object:
                map(value.size());
                for (const auto& [key, element] : value.get_ref<const Json::object_t&>()) {
                    str(key);
                    json(element);
                }
                break;
        }
    }

private:
    static constexpr std::size_t kStaged = 64;

    void room(std::size_t size) {
        if (used_ + size > kStaged) flush();
    }
    void put(std::uint8_t value) { staged_[used_++] = static_cast<char>(value); }
    void byte(std::uint8_t value) {
        room(1);
        put(value);
    }
    void big(std::uint64_t value, int size) {
        for (int k = size - 1; k >= 0; --k) put(static_cast<std::uint8_t>(value >> (8 * k)));
    }
    void header(std::size_t size, std::uint8_t fix, std::uint8_t wide) {
        room(5);
        if (size < 16) {
            put(static_cast<std::uint8_t>(fix | size));
        } else if (size < 0x10000) {
            put(wide);
            big(size, 2);
        } else {
            put(static_cast<std::uint8_t>(wide + 1));
            big(size, 4);
        }
    }
    void bytes(const char* data, std::size_t size) {
        if (size <= kStaged - used_) {
            std::memcpy(staged_ + used_, data, size);
            used_ += size;
            return;
        }
        flush();
        writer_.write(data, size);
    }

    Writer& writer_;
    char staged_[kStaged];
    std::size_t used_ = 0;
};

// The frames of the hot path (`tasks`, `task`, `results`, `result`) read straight from their
// bytes into the message, without msgpack's object tree (decision 241). Strict: a frame in the
// form our own encoders write (the message's `type` its first key, no unknown or repeated key,
// nothing an unpack_limit would refuse) is read here; anything else returns false, and the
// general decoder reads it, accepting what it always accepted and saying why it refuses the rest.
class FastReader {
public:
    explicit FastReader(std::string_view bytes)
        : at_(reinterpret_cast<const std::uint8_t*>(bytes.data())), end_(at_ + bytes.size()) {}

    bool done() const { return at_ == end_; }

    bool map(std::uint32_t& size) { return container(0x80, 0xde, size); }
    bool array(std::uint32_t& size) { return container(0x90, 0xdc, size); }

    bool str(std::string_view& out) {
        if (!need(1)) return false;
        const std::uint8_t head = *at_;
        std::size_t size = 0;
        if ((head & 0xe0) == 0xa0) {
            size = head & 0x1f;
            ++at_;
        } else if (head == 0xd9 && need(2)) {
            size = at_[1];
            at_ += 2;
        } else if (head == 0xda && need(3)) {
            size = big<std::uint16_t>(at_ + 1);
            at_ += 3;
        } else if (head == 0xdb && need(5)) {
            size = big<std::uint32_t>(at_ + 1);
            at_ += 5;
        } else {
            return false;
        }
        if (!need(size)) return false;
        out = std::string_view(reinterpret_cast<const char*>(at_), size);
        at_ += size;
        return true;
    }

    // Assigned only when it differs: a message's default ("result", "task") and an empty error
    // are most of what comes, and std::string::assign is a call even for those.
    bool str(std::string& out) {
        std::string_view text;
        if (!str(text)) return false;
        if (text != out) out.assign(text);
        return true;
    }

    // An integer as msgpack-c sees it: POSITIVE_INTEGER (`negative` false, `u`) for any value
    // >= 0, signed encodings included, NEGATIVE_INTEGER (`i`) below.
    struct Integer {
        bool negative = false;
        std::uint64_t u = 0;
        std::int64_t i = 0;
    };
    bool integer(Integer& out) {
        if (!need(1)) return false;
        const std::uint8_t head = *at_;
        std::int64_t value = 0;
        if (head <= 0x7f) {
            out = {false, head, 0};
            ++at_;
            return true;
        }
        if (head >= 0xe0) {
            value = static_cast<std::int8_t>(head);
            ++at_;
        } else if (head >= 0xcc && head <= 0xcf) {
            const std::size_t size = std::size_t{1} << (head - 0xcc);
            if (!need(1 + size)) return false;
            std::uint64_t u = 0;
            for (std::size_t k = 0; k < size; ++k) u = (u << 8) | at_[1 + k];
            at_ += 1 + size;
            out = {false, u, 0};
            return true;
        } else if (head >= 0xd0 && head <= 0xd3) {
            const std::size_t size = std::size_t{1} << (head - 0xd0);
            if (!need(1 + size)) return false;
            std::uint64_t u = 0;
            for (std::size_t k = 0; k < size; ++k) u = (u << 8) | at_[1 + k];
            const unsigned shift = static_cast<unsigned>(64 - 8 * size);
            value = static_cast<std::int64_t>(u << shift) >> shift;  // sign-extended
            at_ += 1 + size;
        } else {
            return false;
        }
        if (value >= 0)
            out = {false, static_cast<std::uint64_t>(value), 0};
        else
            out = {true, 0, value};
        return true;
    }

    bool unsigned_number(std::uint64_t& out) {
        Integer value;
        if (!integer(value) || value.negative) return false;
        out = value.u;
        return true;
    }

    // A float, or an integer read as a double (as msgpack-c converts either).
    bool number(double& out) {
        if (!need(1)) return false;
        if (*at_ == 0xcb && need(9)) {
            out = std::bit_cast<double>(big<std::uint64_t>(at_ + 1));
            at_ += 9;
            return true;
        }
        if (*at_ == 0xca && need(5)) {
            out = std::bit_cast<float>(big<std::uint32_t>(at_ + 1));
            at_ += 5;
            return true;
        }
        Integer value;
        if (!integer(value)) return false;
        out = value.negative ? static_cast<double>(value.i) : static_cast<double>(value.u);
        return true;
    }

    bool boolean(bool& out) {
        if (!need(1) || (*at_ != 0xc2 && *at_ != 0xc3)) return false;
        out = *at_++ == 0xc3;
        return true;
    }

    // Any value JSON holds, as json_msgpack.hpp's convert makes it; binary and ext are left
    // to the general decoder. `depth`: containers around it, the message's own included.
    bool json(Json& out, int depth) {
        if (!need(1)) return false;
        const std::uint8_t head = *at_;
        if (head == 0xc0) {
            ++at_;
            out = nullptr;
            return true;
        }
        if (head == 0xc2 || head == 0xc3) {
            bool value = false;
            boolean(value);
            out = value;
            return true;
        }
        if (head == 0xca || head == 0xcb) {
            double value = 0;
            if (!number(value)) return false;
            out = value;
            return true;
        }
        if (head <= 0x7f || head >= 0xe0 || (head >= 0xcc && head <= 0xd3)) {
            Integer value;
            if (!integer(value)) return false;
            if (value.negative)
                out = value.i;
            else
                out = value.u;
            return true;
        }
        if ((head & 0xe0) == 0xa0 || (head >= 0xd9 && head <= 0xdb)) {
            std::string_view text;
            if (!str(text)) return false;
            out = std::string(text);
            return true;
        }
        if (depth >= kMaxFastDepth) return false;
        std::uint32_t size = 0;
        if ((head & 0xf0) == 0x90 || head == 0xdc || head == 0xdd) {
            if (!array(size)) return false;
            out = Json::array();
            auto& elements = out.get_ref<Json::array_t&>();
            elements.reserve(size);
            for (std::uint32_t k = 0; k < size; ++k)
                if (!json(elements.emplace_back(), depth + 1)) return false;
            return true;
        }
        if ((head & 0xf0) == 0x80 || head == 0xde || head == 0xdf) {
            if (!map(size)) return false;
            out = Json::object();
            auto& fields = out.get_ref<Json::object_t&>();
            for (std::uint32_t k = 0; k < size; ++k) {
                std::string_view key;
                if (!str(key)) return false;
                const auto [field, added] = fields.try_emplace(std::string(key));
                if (!added || !json(field->second, depth + 1)) return false;
            }
            return true;
        }
        return false;  // binary, ext, or not msgpack
    }

    // Walks over one value as json() would read it, making nothing: false wherever json()
    // could fail, and also for a map of more than kSkimKeys keys (its keys are compared pairwise
    // for a repeat): the caller then reads it with json(), which refuses what it must.
    bool skim(int depth) {
        if (!need(1)) return false;
        const std::uint8_t head = *at_;
        if (head == 0xc0 || head == 0xc2 || head == 0xc3) {
            ++at_;
            return true;
        }
        if (head == 0xca || head == 0xcb) {
            double ignored = 0;
            return number(ignored);
        }
        if (head <= 0x7f || head >= 0xe0 || (head >= 0xcc && head <= 0xd3)) {
            Integer ignored;
            return integer(ignored);
        }
        if ((head & 0xe0) == 0xa0 || (head >= 0xd9 && head <= 0xdb)) {
            std::string_view ignored;
            return str(ignored);
        }
        if (depth >= kMaxFastDepth) return false;
        std::uint32_t size = 0;
        if ((head & 0xf0) == 0x90 || head == 0xdc || head == 0xdd) {
            if (!array(size)) return false;
            for (std::uint32_t k = 0; k < size; ++k)
                if (!skim(depth + 1)) return false;
            return true;
        }
        if ((head & 0xf0) == 0x80 || head == 0xde || head == 0xdf) {
            if (!map(size) || size > kSkimKeys) return false;
            std::string_view keys[kSkimKeys];
            for (std::uint32_t k = 0; k < size; ++k) {
                if (!str(keys[k])) return false;
                for (std::uint32_t before = 0; before < k; ++before)
                    if (keys[before] == keys[k]) return false;
                if (!skim(depth + 1)) return false;
            }
            return true;
        }
        return false;
    }

    const char* position() const { return reinterpret_cast<const char*>(at_); }
    void rewind(const char* to) { at_ = reinterpret_cast<const std::uint8_t*>(to); }

private:
    static constexpr std::uint32_t kSkimKeys = 16;
    // Well inside decode()'s unpack_limit depth (32), so that nothing read here is refused there.
    static constexpr int kMaxFastDepth = 24;

    bool need(std::size_t size) const { return static_cast<std::size_t>(end_ - at_) >= size; }

    template <typename T>
    static T big(const std::uint8_t* at) {
        T value = 0;
        for (std::size_t k = 0; k < sizeof(T); ++k) value = static_cast<T>((value << 8) | at[k]);
        return value;
    }

    // A map (fix 0x80) or an array (fix 0x90), 16- or 32-bit size at `wide`, `wide` + 1; no
    // larger than decode()'s limit, nor than the bytes left could hold.
    bool container(std::uint8_t fix, std::uint8_t wide, std::uint32_t& size) {
        if (!need(1)) return false;
        const std::uint8_t head = *at_;
        if ((head & 0xf0) == fix) {
            size = head & 0x0f;
            ++at_;
        } else if (head == wide && need(3)) {
            size = big<std::uint16_t>(at_ + 1);
            at_ += 3;
        } else if (head == wide + 1 && need(5)) {
            size = big<std::uint32_t>(at_ + 1);
            at_ += 5;
        } else {
            return false;
        }
        return size <= kMaxContainer && need(size);
    }

    const std::uint8_t* at_;
    const std::uint8_t* end_;
};

}  // namespace taskfarm::proto::fast
