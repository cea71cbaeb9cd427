-- Completed 2025 orders per customer country and product category: a SQL pipeline file.
-- `pipeline show configs/country_revenue.sql` prints the JSON pipeline it compiles to.
CREATE OR REPLACE PIPELINE country_revenue
WITH (
  description = 'Revenue of completed 2025 orders per customer country and category, for categories over 5,000 in a country.',
  params = {"data_dir": "${env:PIPELINE_DATA_DIR:-.cache/sample-data}",
            "output_dir": "${env:PIPELINE_OUTPUT_DIR:-.cache/output}"}
) AS
EXTRACT FROM file '${data_dir}/customers.csv' FORMAT csv
  OPTIONS (schema 'customer_id BIGINT, name STRING, email STRING, country STRING, segment STRING, signup_date DATE')
  AS customers
EXTRACT FROM file '${data_dir}/orders_2025' FORMAT json
  OPTIONS (schema 'order_id BIGINT, customer_id BIGINT, order_date DATE, status STRING, product_category STRING, region STRING, quantity INT, amount DECIMAL(10,2)')
  WHERE status = 'completed'
  AS orders
TRANSFORM
  SELECT c.country, o.product_category AS category,
         SUM(o.amount) AS revenue, COUNT(*) AS orders
  FROM orders o JOIN customers c ON o.customer_id = c.customer_id
  GROUP BY c.country, o.product_category
  HAVING SUM(o.amount) > 5000
VALIDATE
  CHECK revenue > 0
  CHECK country IS NOT NULL ON VIOLATION WARN
LOAD TO delta '${output_dir}/delta/country_revenue' MODE overwrite;
