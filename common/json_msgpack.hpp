#pragma once
// msgpack-c adaptors for nlohmann::json, so that task parameters and values (JSON in the
// journal) travel as msgpack maps inside a message, written and read in one pass with the
// message around them. Reading accepts nil, booleans, integers, floats, strings, binary,
// arrays and maps with string keys; an ext type (which JSON cannot hold) throws type_error.
// Sizes and depth are bounded by the unpack_limit of decode().

#include <cstdint>
#include <string>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
    namespace adaptor {

    template <>
    struct pack<nlohmann::json> {
        template <typename Stream>
        packer<Stream>& operator()(packer<Stream>& out, const nlohmann::json& value) const {
            using T = nlohmann::json::value_t;
            switch (value.type()) {
                case T::null:
                case T::discarded: out.pack_nil(); break;
                case T::boolean: out.pack(value.get<bool>()); break;
                case T::number_integer: out.pack(value.get<std::int64_t>()); break;
                case T::number_unsigned: out.pack(value.get<std::uint64_t>()); break;
                case T::number_float: out.pack(value.get<double>()); break;
                case T::string: out.pack(value.get_ref<const std::string&>()); break;
                case T::binary: {
                    const auto& bytes = value.get_binary();
                    out.pack_bin(static_cast<std::uint32_t>(bytes.size()));
                    out.pack_bin_body(reinterpret_cast<const char*>(bytes.data()),
                                      static_cast<std::uint32_t>(bytes.size()));
                    break;
                }
                case T::array:
                    out.pack_array(static_cast<std::uint32_t>(value.size()));
                    for (const auto& element : value) operator()(out, element);
                    break;
                case T::object:
                    out.pack_map(static_cast<std::uint32_t>(value.size()));
                    for (const auto& [key, element] : value.items()) {
                        out.pack(key);
                        operator()(out, element);
                    }
                    break;
            }
            return out;
        }
    };

    template <>
    struct convert<nlohmann::json> {
        const msgpack::object& operator()(const msgpack::object& in, nlohmann::json& out) const {
            switch (in.type) {
                case type::NIL: out = nullptr; break;
                case type::BOOLEAN: out = in.via.boolean; break;
                case type::POSITIVE_INTEGER: out = in.via.u64; break;
                case type::NEGATIVE_INTEGER: out = in.via.i64; break;
                case type::FLOAT32:
                case type::FLOAT64: out = in.via.f64; break;
                case type::STR: out = std::string(in.via.str.ptr, in.via.str.size); break;
                case type::BIN: {
                    const auto* bytes = reinterpret_cast<const std::uint8_t*>(in.via.bin.ptr);
                    out = nlohmann::json::binary(std::vector<std::uint8_t>(bytes, bytes + in.via.bin.size));
                    break;
                }
                case type::ARRAY:
                    out = nlohmann::json::array();
                    for (std::uint32_t i = 0; i < in.via.array.size; ++i)
                        operator()(in.via.array.ptr[i], out.emplace_back());
                    break;
                case type::MAP:
                    out = nlohmann::json::object();
                    for (std::uint32_t i = 0; i < in.via.map.size; ++i) {
                        const msgpack::object_kv& entry = in.via.map.ptr[i];
                        if (entry.key.type != type::STR) throw type_error();
                        const std::string key(entry.key.via.str.ptr, entry.key.via.str.size);
                        if (out.contains(key)) throw std::runtime_error("duplicate key '" + key + "'");
                        operator()(entry.val, out[key]);
                    }
                    break;
                default: throw type_error();  // EXT
            }
            return in;
        }
    };

    }  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS)
}  // namespace msgpack
