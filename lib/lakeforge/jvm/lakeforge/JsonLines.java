package lakeforge;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonStreamContext;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.util.JsonParserDelegate;
import java.io.IOException;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.json.CreateJacksonParser;
import org.apache.spark.sql.catalyst.json.JSONOptions;
import org.apache.spark.sql.catalyst.json.JacksonParser;
import org.apache.spark.sql.catalyst.util.FailureSafeParser;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.catalyst.util.PermissiveMode$;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * Ingest's JSON lines parsed once. Each line goes through the parser `from_json` uses (Spark's JacksonParser inside
 * its FailureSafeParser, PERMISSIVE), so the typed values, partial results and corrupt-record column are exactly
 * from_json's. The Jackson tokens are watched on their way to it, so the same pass also lists the top-level keys the
 * schema does not spell (as `json_object_keys` would, without a second parse) and sees whether more than white
 * space follows the object (Spark stops at the end of the first value). Called from lakeforge.ingest through
 * py4j; built by `lakeforge setup-jars` against the installed Spark.
 */
public final class JsonLines {
  private JsonLines() {}

  /** A Jackson parser that records the top-level field names not in `declared` and, when it is closed after the
   *  whole root value was read, whether anything but white space follows. */
  static final class Watched extends JsonParserDelegate {
    private final Set<String> declared;
    private Set<String> other;
    private boolean complete;
    private boolean trailing;

    Watched(JsonParser parser, Set<String> declared) {
      super(parser);
      this.declared = declared;
    }

    @Override
    public JsonToken nextToken() throws IOException {
      JsonToken token = delegate.nextToken();
      if (token == JsonToken.FIELD_NAME) {
        JsonStreamContext object = delegate.getParsingContext();
        if (object.getParent() != null && object.getParent().inRoot()) {
          String name = delegate.currentName();
          if (!declared.contains(name)) {
            if (other == null) {
              other = new LinkedHashSet<>();
            }
            other.add(name);
          }
        }
      }
      return token;
    }

    @Override
    public String nextFieldName() throws IOException {  // through nextToken, so no key goes unseen
      return nextToken() == JsonToken.FIELD_NAME ? delegate.currentName() : null;
    }

    @Override
    public void close() throws IOException {
      // Back at the root once the whole value was read; a syntax error leaves the parser inside it.
      complete = !delegate.isClosed() && delegate.currentToken() != null && delegate.getParsingContext().inRoot();
      if (complete) {
        try {
          trailing = delegate.nextToken() != null;
        } catch (IOException notJson) {
          trailing = true;
        }
      }
      delegate.close();
    }

    /** The undeclared keys of a line that parses as JSON (null when none, or when it does not parse). */
    GenericArrayData otherKeys() {
      if (!complete || other == null) {
        return null;
      }
      return new GenericArrayData(other.stream().map(UTF8String::fromString).toArray());
    }
  }

  /**
   * `lines` with three columns more: `record`, the struct from_json makes of column `input` with `schema` (JSON;
   * its field `corrupt` holds the line of a record that does not parse), `other_keys`, the top-level keys of a
   * line that parses which are not spelled as in `declared` (null when none), and `trailing`, true when more than
   * white space follows the first JSON value. A null line, or one longer than `maxBytes`, is not parsed: nulls.
   */
  public static Dataset<Row> parse(Dataset<Row> lines, String input, String schema, Map<String, String> options,
                                   String timeZone, String corrupt, List<String> declared, long maxBytes) {
    StructType recordType = (StructType) StructType.fromJson(schema);
    StructType in = lines.schema();
    StructField[] fields = in.fields();
    int at = in.fieldIndex(input);
    StructType out = in.add("record", recordType)
        .add("other_keys", DataTypes.createArrayType(DataTypes.StringType))
        .add("trailing", DataTypes.BooleanType);
    scala.collection.immutable.Map<String, String> scalaOptions =
        scala.collection.immutable.Map$.MODULE$.from(scala.jdk.javaapi.CollectionConverters.asScala(options));
    Set<String> names = new HashSet<>(declared);
    org.apache.spark.rdd.RDD<InternalRow> rows = ((org.apache.spark.sql.classic.Dataset<Row>) lines)
        .queryExecution().toRdd().toJavaRDD().mapPartitions((Iterator<InternalRow> it) -> {
          JSONOptions parsed = new JSONOptions(scalaOptions, timeZone, corrupt);
          StructType typed = new StructType(Arrays.stream(recordType.fields())
              .filter(f -> !f.name().equals(corrupt)).toArray(StructField[]::new));
          JacksonParser jackson = new JacksonParser(typed, parsed, false, JacksonParser.$lessinit$greater$default$4());
          Watched[] watched = new Watched[1];
          scala.Function2<JsonFactory, UTF8String, JsonParser> open = (factory, line) -> {
            watched[0] = new Watched(CreateJacksonParser.utf8String(factory, line), names);
            return watched[0];
          };
          scala.Function1<UTF8String, UTF8String> asText = line -> line;
          FailureSafeParser<UTF8String> parser = new FailureSafeParser<>(
              line -> jackson.parse(line, open, asText), PermissiveMode$.MODULE$, recordType, corrupt);
          return new Iterator<InternalRow>() {
            @Override
            public boolean hasNext() {
              return it.hasNext();
            }

            @Override
            public InternalRow next() {
              InternalRow row = it.next().copy();  // the scan reuses its row: keep this one's strings
              Object[] values = new Object[fields.length + 3];
              for (int i = 0; i < fields.length; i++) {
                values[i] = row.get(i, fields[i].dataType());
              }
              UTF8String line = row.isNullAt(at) ? null : row.getUTF8String(at);
              if (line != null && line.numBytes() <= maxBytes) {
                watched[0] = null;
                scala.collection.Iterator<InternalRow> record = parser.parse(line);
                values[fields.length] = record.hasNext() ? record.next().copy() : null;
                if (watched[0] != null) {
                  values[fields.length + 1] = watched[0].otherKeys();
                  values[fields.length + 2] = watched[0].trailing;
                }
              }
              return new GenericInternalRow(values);
            }
          };
        }).rdd();
    return ((org.apache.spark.sql.classic.SparkSession) lines.sparkSession()).internalCreateDataFrame(rows, out, false);
  }
}
