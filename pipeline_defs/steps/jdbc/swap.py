"""Overwrite by swap: the new rows are loaded into a complete copy of the target's definition
(columns, defaults, constraints, indexes built after the load, grants, comments, storage
options), and one short transaction renames it into place and drops the old table. The rows
are written once; readers see the old table or the new one, never a mix.

Used when nothing outside the table depends on it: a view, a foreign key either way, a
trigger, a rule, a policy, a publication, a function of its row type, inheritance or
partitioning, an identity column, column-level grants, another owner. Then the load keeps
the classic publish (TRUNCATE + INSERT from staging in one transaction), and says why."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline_defs.steps.jdbc.connection import Connection, Endpoint


@dataclass
class Swap:
    table: str  # as the step names it
    schema: str
    name: str
    create: str  # creates the staging table (before the load)
    finish: list[str] = field(default_factory=list)  # after the load, before publishing
    publish: list[str] = field(default_factory=list)  # the one transaction


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def plan_postgres(conn: Connection, table: str, stage: str, log) -> Swap | None:
    rows = conn.query(
        "SELECT c.oid, c.reltype, n.nspname, c.relname, c.relkind, c.relispartition, "
        "c.relrowsecurity, c.relreplident, c.reltablespace, c.relpersistence, "
        "array_to_string(c.reloptions, ', '), obj_description(c.oid, 'pg_class'), "
        "c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), "
        "EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid), "
        "EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND "
        "(attidentity <> '' OR attacl IS NOT NULL)), "
        "EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = c.oid AND contype = 'x') "
        f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.oid = {_lit(table)}::regclass")
    (oid, reltype, schema, name, kind, is_part, rls, replident, space, persistence, options,
     comment, own, inherits, ident_or_colacl, exclusion) = rows[0]
    why = ("it is not a plain table" if kind != "r" else
           "it is a partition or has inheritance" if is_part == "t" or inherits == "t" else
           "it has row-level security" if rls == "t" else
           "its replica identity is not the default" if replident != "d" else
           "it is in a non-default tablespace" if space != "0" else
           "another role owns it" if own != "t" else
           "it has an identity column or column-level grants" if ident_or_colacl == "t" else
           "it has an exclusion constraint" if exclusion == "t" else None)
    if why is None:
        blockers = conn.query(
            "SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
            f"WHERE ((d.refclassid = 'pg_class'::regclass AND d.refobjid = {oid}) OR "
            f"(d.refclassid = 'pg_type'::regclass AND d.refobjid = {reltype})) "
            "AND d.deptype IN ('n', 'a') "
            "AND NOT (d.classid = 'pg_class'::regclass AND d.objid IN ("
            f"SELECT indexrelid FROM pg_index WHERE indrelid = {oid} "
            "UNION SELECT oid FROM pg_class WHERE relkind = 'S')) "
            "AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN ("
            f"SELECT oid FROM pg_constraint WHERE conrelid = {oid} AND contype IN "
            "('c', 'p', 'u', 'n'))) "
            "AND NOT (d.classid = 'pg_attrdef'::regclass AND d.objid IN ("
            f"SELECT oid FROM pg_attrdef WHERE adrelid = {oid})) "
            "AND NOT (d.classid = 'pg_statistic_ext'::regclass AND d.objid IN ("
            f"SELECT oid FROM pg_statistic_ext WHERE stxrelid = {oid})) "
            "AND d.classid <> 'pg_type'::regclass LIMIT 3")
        if blockers:
            names = dict.fromkeys(re.sub(r"^rule _RETURN on ", "", b[0]) for b in blockers)
            why = "; ".join(names) + (" depends" if len(names) == 1 else " depend") + " on it"
    if why is not None:
        log.info(f"overwrite of {table}: TRUNCATE + INSERT in one transaction, not a table "
                 f"swap, because {why}")
        return None

    stage_name = stage.rpartition(".")[2]
    qual = f"{_ident(schema)}.{_ident(name)}"
    unlogged = "UNLOGGED " if persistence == "u" else ""
    # every property of the table but its indexes (built after the load, much faster)
    swap = Swap(table, schema, name, f"CREATE {unlogged}TABLE {stage} (LIKE {qual} INCLUDING "
                                     "ALL EXCLUDING INDEXES)")
    renames: list[str] = []
    indexes = conn.query(
        "SELECT ic.relname, pg_get_indexdef(i.indexrelid), con.conname, con.contype, "
        "con.condeferrable, con.condeferred, obj_description(i.indexrelid, 'pg_class'), "
        "obj_description(con.oid, 'pg_constraint') FROM pg_index i "
        "JOIN pg_class ic ON ic.oid = i.indexrelid LEFT JOIN pg_constraint con ON "
        f"con.conindid = i.indexrelid AND con.conrelid = i.indrelid WHERE i.indrelid = {oid} "
        "ORDER BY ic.relname")
    for n, (iname, idef, cname, ctype, deferrable, deferred, icomment, ccomment) in \
            enumerate(indexes):
        tmp = f"{stage_name[:40]}_i{n}"
        m = re.match(r"CREATE (UNIQUE )?INDEX .+? ON (?:ONLY )?\S+ USING (.*)$", idef, re.S)
        if m is None:
            log.info(f"overwrite of {table}: TRUNCATE + INSERT, not a table swap: index "
                     f"{iname} ({idef}) is not recreated automatically")
            return None
        swap.finish.append(f"CREATE {m.group(1) or ''}INDEX {_ident(tmp)} ON {stage} "
                           f"USING {m.group(2)}")
        if icomment:
            swap.finish.append(f"COMMENT ON INDEX {_ident(schema)}.{_ident(tmp)} IS "
                               f"{_lit(icomment)}")
        if ctype in ("p", "u"):
            kind_sql = "PRIMARY KEY" if ctype == "p" else "UNIQUE"
            defer = (" DEFERRABLE INITIALLY " + ("DEFERRED" if deferred == "t" else "IMMEDIATE")
                     if deferrable == "t" else "")
            swap.finish.append(f"ALTER TABLE {stage} ADD CONSTRAINT {_ident(tmp)} {kind_sql} "
                               f"USING INDEX {_ident(tmp)}{defer}")
            if ccomment:
                swap.finish.append(f"COMMENT ON CONSTRAINT {_ident(tmp)} ON {stage} IS "
                                   f"{_lit(ccomment)}")
            renames.append(f"ALTER TABLE {qual} RENAME CONSTRAINT {_ident(tmp)} TO "
                           f"{_ident(cname)}")
        else:
            renames.append(f"ALTER INDEX {_ident(schema)}.{_ident(tmp)} RENAME TO "
                           f"{_ident(iname)}")
    if options:
        swap.finish.append(f"ALTER TABLE {stage} SET ({options})")
    if comment:
        swap.finish.append(f"COMMENT ON TABLE {stage} IS {_lit(comment)}")
    for grantee, privileges, grantable in conn.query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, "
            "string_agg(a.privilege_type, ', '), a.is_grantable FROM pg_class c, "
            "aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            f"WHERE c.oid = {oid} AND a.grantee <> c.relowner GROUP BY 1, 3"):
        swap.finish.append(f"GRANT {privileges} ON {stage} TO {grantee}"
                           + (" WITH GRANT OPTION" if grantable == "t" else ""))
    sequences = conn.query(
        "SELECT quote_ident(sn.nspname) || '.' || quote_ident(s.relname), quote_ident(a.attname) "
        "FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_namespace sn ON sn.oid = s.relnamespace JOIN pg_attribute a ON "
        "a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        f"WHERE d.refobjid = {oid} AND d.deptype = 'a' AND d.classid = 'pg_class'::regclass")
    old = f"{stage_name[:40]}_old"
    swap.publish = [
        f"ALTER TABLE {qual} RENAME TO {_ident(old)}",
        f"ALTER TABLE {stage} RENAME TO {_ident(name)}",
        # serial columns: their sequence goes on with the new table (it would be dropped
        # with the old one)
        *(f"ALTER SEQUENCE {seq} OWNED BY {qual}.{col}" for seq, col in sequences),
        f"DROP TABLE {_ident(schema)}.{_ident(old)}",
        *renames,
    ]
    return swap


def plan_mysql(conn: Connection, ep: Endpoint, table: str, stage: str, log) -> Swap | None:
    """MySQL's `CREATE TABLE ... LIKE` copies columns, indexes and options; grants are kept
    by name and views resolve by name, so they follow the swap. Triggers and foreign keys
    (either way) are not copied: then the classic publish."""
    schema, _, name = table.rpartition(".")
    name = name.strip("`")
    db = f"'{schema.strip('`')}'" if schema else "database()"
    blockers = conn.query(
        f"SELECT concat('trigger ', trigger_name) FROM information_schema.triggers WHERE "
        f"event_object_schema = {db} AND event_object_table = {_lit(name)} UNION ALL "
        f"SELECT concat('foreign key ', constraint_name) FROM "
        f"information_schema.referential_constraints WHERE constraint_schema = {db} AND "
        f"(table_name = {_lit(name)} OR referenced_table_name = {_lit(name)}) LIMIT 3")
    if blockers:
        log.info(f"overwrite of {table}: DELETE + INSERT in one transaction, not a table swap, "
                 f"because of {', '.join(b[0] for b in blockers)}")
        return None
    old = staging_old(stage)
    return Swap(table, schema, name, f"CREATE TABLE {stage} LIKE {table}",
                publish=[f"RENAME TABLE {table} TO {old}, {stage} TO {table}",
                         f"DROP TABLE {old}"])


def staging_old(stage: str) -> str:
    schema, _, name = stage.rpartition(".")
    return f"{schema + '.' if schema else ''}{name[:50]}_old"
