// A real HDFS for the tests: Hadoop's MiniDFSCluster (NameNode + one DataNode in this JVM) on
// loopback, on free ports. Run from source (java MiniHdfs.java <data dir>) with
// .cache/hdfs-jars on the classpath; prints "hdfs <rpc uri> <web uri>" once it serves.
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniHdfs {
  public static void main(String[] args) throws Exception {
    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, args[0]);
    conf.set("dfs.permissions.enabled", "false");
    conf.set("dfs.datanode.hostname", "127.0.0.1");
    MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf).numDataNodes(1).format(true).build();
    cluster.waitActive();
    int web = cluster.getNameNode().getHttpAddress().getPort();
    System.out.println("hdfs hdfs://127.0.0.1:" + cluster.getNameNodePort() + " http://127.0.0.1:" + web);
    System.out.flush();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::shutdown));
    Thread.currentThread().join();
  }
}
