import { test } from "node:test";
import assert from "node:assert/strict";
import { InsertCounter } from "./mariadb.js";

test("InsertCounter counts the tuples of each table in a dump stream, whatever the chunking", () => {
  const dump = [
    "-- MariaDB dump 10.19",
    "CREATE TABLE `orders` (",
    "  `id` int(11) NOT NULL,",
    "  `note` text",
    ") ENGINE=InnoDB;",
    "INSERT INTO `orders` VALUES (1,'a (tricky) value'),(2,'it\\'s (not) a tuple'),(3,'x\\\\'),(4,NULL);",
    "INSERT INTO `orders` VALUES (5,'(('),(6,')),(');",
    "CREATE TABLE `empty` (`id` int) ENGINE=InnoDB;",
    "CREATE TABLE `we``ird` (`id` int);",
    "INSERT INTO `we``ird` (`id`) VALUES (7);",
    "-- INSERT INTO `orders` VALUES (99); is a comment, not an insert",
    "CREATE TABLE `lines` (`id` int, `n` text);",
    "INSERT INTO `lines` VALUES",
    "(1,'a'),",
    "(2,'b;\\n(c)'),",
    "(3,'it\\'s');",
    "UNLOCK TABLES;",
    "",
  ].join("\n");
  const bytes = Buffer.from(dump);
  for (const size of [1, 3, 7, 64, bytes.length]) {
    const c = new InsertCounter();
    for (let i = 0; i < bytes.length; i += size) c.feed(bytes.subarray(i, i + size));
    assert.deepEqual(Object.fromEntries(c.tables), { orders: 6, empty: 0, "we`ird": 1, lines: 3 }, `chunk size ${size}`);
  }
});
