package pipeline_defs;

import java.lang.reflect.Field;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.spark.SparkContext;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerEvent;
import org.apache.spark.sql.catalyst.trees.TreeNode;
import org.apache.spark.sql.catalyst.trees.TreeNodeTag;
import org.apache.spark.sql.execution.SparkPlan;
import org.apache.spark.sql.execution.adaptive.AdaptiveSparkPlanExec;
import org.apache.spark.sql.execution.adaptive.QueryStageExec;
import org.apache.spark.sql.execution.exchange.ReusedExchangeExec;
import org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionEnd;
import org.apache.spark.sql.execution.ui.SparkListenerSQLExecutionStart;

/**
 * Which operators of a step's Spark queries ran natively (Apache DataFusion Comet) and which
 * stayed on Spark, with Comet's reason, per Spark job group (one per step of a run).
 *
 * A listener on Spark's bus: a SQL execution's start says its job group, its end carries the
 * executed plan (AQE's final plan). Only the groups Python asked to watch are kept, until it
 * drains them at the step's end, so that a long streaming run does not accumulate anything.
 * Delta's queries of its own log (a table's state at a commit) are not the step's work: left
 * out.
 */
public final class NativeCoverage extends SparkListener {
    private static final Set<String> WRAPPERS = Set.of(
        "WholeStageCodegenExec", "InputAdapter", "AQEShuffleReadExec", "ColumnarToRowExec",
        "RowToColumnarExec", "CometColumnarToRowExec", "CometNativeColumnarToRowExec",
        "CometSparkToColumnarExec", "CommandResultExec", "ExecutedCommandExec",
        "DataWritingCommandExec", "WriteFilesExec", "ReusedSubqueryExec", "SubqueryExec",
        "SubqueryBroadcastExec", "AppendDataExec", "AppendDataExecV1", "OverwriteByExpressionExec",
        "OverwriteByExpressionExecV1", "AtomicReplaceTableAsSelectExec",
        "AtomicCreateTableAsSelectExec", "CreateTableAsSelectExec", "ReplaceTableAsSelectExec",
        "ResultQueryStageExec", "LocalTableScanExec", "EmptyRelationExec");

    private static NativeCoverage installed;
    private final Map<String, Tally> watched = new ConcurrentHashMap<>();
    private final Map<Long, String> groups = new ConcurrentHashMap<>();

    /** What the queries of one job group ran: operator -> native, or operator -> reasons. */
    static final class Tally {
        final Set<String> nativeOps = new TreeSet<>();
        final Map<String, Set<String>> sparkOps = new TreeMap<>();
        int queries;
    }

    /** The listener of this SparkContext, added once. */
    public static synchronized NativeCoverage install(SparkContext sc) {
        if (installed == null || installed.stopped(sc)) {
            installed = new NativeCoverage();
            installed.context = sc;
            sc.addSparkListener(installed);
        }
        return installed;
    }

    private SparkContext context;

    private boolean stopped(SparkContext sc) {
        return context != sc || context.isStopped();
    }

    public void watch(String group) {
        watched.put(group, new Tally());
    }

    /**
     * The group's tally once Spark's bus has delivered every event posted so far, as lines:
     * "queries\tN", "native\tOp", "spark\tOp\treason; reason". Forgets the group.
     */
    public String drain(String group) {
        try {
            context.listenerBus().waitUntilEmpty(10_000L);
        } catch (java.util.concurrent.TimeoutException e) {
            // a bus still busy after 10 s: the tally so far
        }
        Tally t = watched.remove(group);
        if (t == null) {
            return "";
        }
        StringBuilder out = new StringBuilder("queries\t" + t.queries + "\n");
        synchronized (t) {
            for (String op : t.nativeOps) {
                out.append("native\t").append(op).append('\n');
            }
            for (Map.Entry<String, Set<String>> e : t.sparkOps.entrySet()) {
                String why = String.join("; ", e.getValue()).replace('\n', ' ').replace('\t', ' ');
                out.append("spark\t").append(e.getKey()).append('\t').append(why).append('\n');
            }
        }
        return out.toString();
    }

    @Override
    public void onOtherEvent(SparkListenerEvent event) {
        if (event instanceof SparkListenerSQLExecutionStart) {
            SparkListenerSQLExecutionStart s = (SparkListenerSQLExecutionStart) event;
            if (s.jobGroupId().isDefined() && watched.containsKey(s.jobGroupId().get())) {
                groups.put(s.executionId(), s.jobGroupId().get());
            }
        } else if (event instanceof SparkListenerSQLExecutionEnd) {
            SparkListenerSQLExecutionEnd e = (SparkListenerSQLExecutionEnd) event;
            String group = groups.remove(e.executionId());
            Tally t = group == null ? null : watched.get(group);
            if (t == null || e.qe() == null) {
                return;
            }
            try {
                SparkPlan plan = e.qe().executedPlan();
                if (plan.toString().contains("/_delta_log")) {
                    return; // Delta reading its own log (the table's state), not the step's data
                }
                synchronized (t) {
                    t.queries++;
                    walk(plan, t);
                }
            } catch (RuntimeException ignored) {
                // a plan that cannot be read: that query is not counted
            }
        }
    }

    private static SparkPlan actual(SparkPlan p) {
        while (true) {
            if (p instanceof AdaptiveSparkPlanExec) {
                p = ((AdaptiveSparkPlanExec) p).executedPlan();
            } else if (p instanceof QueryStageExec) {
                p = ((QueryStageExec) p).plan();
            } else if (p instanceof ReusedExchangeExec) {
                p = ((ReusedExchangeExec) p).child();
            } else {
                return p;
            }
        }
    }

    private static void walk(SparkPlan root, Tally t) {
        List<SparkPlan> todo = new ArrayList<>();
        todo.add(root);
        while (!todo.isEmpty()) {
            SparkPlan p = actual(todo.remove(todo.size() - 1));
            String cls = p.getClass().getSimpleName();
            if (!WRAPPERS.contains(cls)) {
                String op = cls.endsWith("Exec") ? cls.substring(0, cls.length() - 4) : cls;
                if (op.startsWith("Comet")) {
                    t.nativeOps.add(op.substring(5));
                } else {
                    Set<String> why = t.sparkOps.computeIfAbsent(op, k -> new TreeSet<>());
                    why.addAll(reasons(p));
                }
            }
            scala.collection.Iterator<SparkPlan> kids = p.children().iterator();
            while (kids.hasNext()) {
                todo.add(kids.next());
            }
            scala.collection.Iterator<SparkPlan> subs = p.subqueries().iterator();
            while (subs.hasNext()) {
                todo.add(subs.next());
            }
        }
    }

    private static TreeNodeTag<scala.collection.immutable.Set<String>> fallbackTag;
    private static boolean noComet;

    /** Comet's fallback reasons tagged on a node (none without Comet on the classpath). */
    @SuppressWarnings("unchecked")
    private static List<String> reasons(TreeNode<?> node) {
        List<String> out = new ArrayList<>();
        if (noComet) {
            return out;
        }
        try {
            if (fallbackTag == null) {
                Class<?> c = Class.forName("org.apache.comet.CometExplainInfo$");
                Field f = c.getField("MODULE$");
                Object module = f.get(null);
                fallbackTag = (TreeNodeTag<scala.collection.immutable.Set<String>>)
                    c.getMethod("FALLBACK_REASONS").invoke(module);
            }
            scala.Option<scala.collection.immutable.Set<String>> v = node.getTagValue(fallbackTag);
            if (v.isDefined()) {
                scala.collection.Iterator<String> it = v.get().iterator();
                while (it.hasNext()) {
                    out.add(it.next());
                }
            }
        } catch (ReflectiveOperationException | LinkageError e) {
            noComet = true;
        }
        return out;
    }
}
