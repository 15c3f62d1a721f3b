#pragma once
// TASKFARM_MSGPACK_MAP(fields...): MSGPACK_DEFINE_MAP with a faster, stricter reader.
//
// msgpack-c's define_map reads a map by first copying every key into a std::map<std::string,
// ...>: an allocation per key, per message, which was most of the cost of decoding a task.
// This reader walks the map once and matches each key against the field names, with the
// same rules otherwise: keys must be strings, unknown keys are ignored, missing keys keep
// their defaults, and each value is converted by msgpack (which throws on a wrong type).
// Stricter: a key given twice is an error (define_map silently kept the first).
// Writing is msgpack-c's own.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include <msgpack.hpp>

namespace taskfarm::detail {

// A field name as define_map holds it, a string literal, without a strlen() per key.
template <std::size_t N>
constexpr std::string_view field_name(const char (&name)[N]) {
    return {name, N - 1};
}

// `fields` is define_map's tuple: name0, field0, name1, field1, ...
template <typename Fields, std::size_t... I>
void unpack_map(const msgpack::object& object, const Fields& fields, std::index_sequence<I...>) {
    static_assert(sizeof...(I) <= 64, "a bit per field in `seen`");
    if (object.type != msgpack::type::MAP) throw msgpack::type_error();
    std::uint64_t seen = 0;
    for (std::uint32_t i = 0; i < object.via.map.size; ++i) {
        const msgpack::object_kv& entry = object.via.map.ptr[i];
        if (entry.key.type != msgpack::type::STR) throw msgpack::type_error();
        const std::string_view key(entry.key.via.str.ptr, entry.key.via.str.size);
        const auto take = [&](std::size_t index, auto& field) {
            if (seen & (std::uint64_t{1} << index))
                throw std::runtime_error("duplicate key '" + std::string(key) + "'");
            seen |= std::uint64_t{1} << index;
            entry.val.convert(field);
            return true;
        };
        static_cast<void>(
            ((key == field_name(std::get<2 * I>(fields)) && take(I, std::get<2 * I + 1>(fields))) || ...));
    }
}

template <typename... Args>
void unpack_map(const msgpack::object& object, const msgpack::type::define_map<Args...>& map) {
    static_assert(sizeof...(Args) % 2 == 0);
    unpack_map(object, map.a, std::make_index_sequence<sizeof...(Args) / 2>{});
}

}  // namespace taskfarm::detail

#define TASKFARM_MSGPACK_MAP(...)                                                                                 \
    template <typename Packer>                                                                                    \
    void msgpack_pack(Packer& msgpack_pk) const {                                                                 \
        msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(__VA_ARGS__).msgpack_pack(msgpack_pk);             \
    }                                                                                                             \
    void msgpack_unpack(msgpack::object const& msgpack_o) {                                                       \
        ::taskfarm::detail::unpack_map(msgpack_o,                                                                 \
                                       msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(__VA_ARGS__));      \
    }                                                                                                             \
    template <typename MSGPACK_OBJECT>                                                                            \
    void msgpack_object(MSGPACK_OBJECT* msgpack_o, msgpack::zone& msgpack_z) const {                              \
        msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(__VA_ARGS__).msgpack_object(msgpack_o, msgpack_z); \
    }
