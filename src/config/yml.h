/* yml.h - libyaml, loaded on first use (dlopen): a keel without a config file never maps it. */
#ifndef KEEL_CONFIG_YML_H
#define KEEL_CONFIG_YML_H

#include <stddef.h>
#include <yaml.h>

/*
 * Only a config file (and the gateway routes in it) is YAML; a keel configured by its
 * environment, as in a container, never parses any. kl_yaml_load() dlopen()s libyaml once
 * instead of linking it (about 72 KiB of resident memory at idle); code includes this header
 * instead of <yaml.h> and calls libyaml by its own names, each a macro over the table.
 */

#define KL_YAML_FUNCS(X)                                                                       \
  X(yaml_document_delete) X(yaml_document_get_node) X(yaml_document_get_root_node)             \
  X(yaml_event_delete) X(yaml_parser_delete) X(yaml_parser_initialize) X(yaml_parser_load)     \
  X(yaml_parser_parse) X(yaml_parser_set_input_file) X(yaml_parser_set_input_string)

/** The table: one pointer per function, typed like the function. */
typedef struct kl_yaml_table {
/* NOLINTNEXTLINE(bugprone-macro-parentheses): f is a declarator name, it cannot be parenthesised */
#define KL_YAML_FIELD(f) __typeof__(&f) f;
  KL_YAML_FUNCS(KL_YAML_FIELD)
#undef KL_YAML_FIELD
} kl_yaml_table;

/**
 * Loads libyaml and fills the table once (thread-safe; later calls return at once). 0, or
 * -ENOENT with a message in err (NULL allowed) when the library or a function is missing.
 */
int kl_yaml_load(char *err, size_t errlen);

/** The table (valid after kl_yaml_load returned 0). */
const kl_yaml_table *kl_yaml(void);

#ifndef KL_YAML_IMPL
#define yaml_document_delete (kl_yaml()->yaml_document_delete)
#define yaml_document_get_node (kl_yaml()->yaml_document_get_node)
#define yaml_document_get_root_node (kl_yaml()->yaml_document_get_root_node)
#define yaml_event_delete (kl_yaml()->yaml_event_delete)
#define yaml_parser_delete (kl_yaml()->yaml_parser_delete)
#define yaml_parser_initialize (kl_yaml()->yaml_parser_initialize)
#define yaml_parser_load (kl_yaml()->yaml_parser_load)
#define yaml_parser_parse (kl_yaml()->yaml_parser_parse)
#define yaml_parser_set_input_file (kl_yaml()->yaml_parser_set_input_file)
#define yaml_parser_set_input_string (kl_yaml()->yaml_parser_set_input_string)
#endif

#endif
